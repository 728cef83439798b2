"""The command lines as a user runs them: `fetch-etl demo|seed` and `dagster asset materialize`, in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl_tests.helpers import (
    FOO_BAR,
    TEST_KEY_HEX,
    aws_env,
    clean_env,
    closed_port,
    drain,
    fetch_all,
    pipeline_env,
    processes_mentioning,
    queue_counts,
    send,
)

BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


def _run(args: Sequence[str], env: Mapping[str, str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _fetch_etl(*args: Any, env: Mapping[str, str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return _run([BIN / "fetch-etl", *args], env, cwd)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --- fetch-etl demo -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class DemoWorkspace:
    """Where demos run, and the server PIDs each demo published (so teardown can stop leftovers by PID)."""

    path: Path
    servers: list[dict[str, Any]] = field(default_factory=list)


def _stop(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except psutil.TimeoutExpired:
            proc.kill()


@pytest.fixture
def demo_workspace() -> Iterator[DemoWorkspace]:
    """A working dir outside pytest's 0700 tmp tree (the embedded server runs as its own user when we are root).

    Afterwards, stops whatever a failed demo left running: the PIDs it published, if they are still our servers,
    and any process with this dir in its command line.
    """
    workspace = DemoWorkspace(Path(tempfile.mkdtemp(prefix="fetch-etl-test-demo-")))
    try:
        yield workspace
    finally:
        for servers in workspace.servers:
            for info in servers.values():
                with contextlib.suppress(psutil.Error, KeyError, TypeError):
                    proc = psutil.Process(info["pid"])
                    ours = str(workspace.path) in " ".join(proc.cmdline()) or (
                        "moto.server" in proc.cmdline() and info["endpoint"].rsplit(":", 1)[1] in proc.cmdline()
                    )
                    if ours:
                        _stop(proc)
        for proc in processes_mentioning(str(workspace.path)):
            _stop(proc)
        shutil.rmtree(workspace.path, ignore_errors=True)


def _run_demo(workspace: DemoWorkspace, state: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the demo; while it runs, read the PIDs LocalStack publishes in <state>/pids.json."""
    args = [BIN / "fetch-etl", "demo", "--messages", "40", "--seed", "1", "--state-dir", state]
    pids_file = state / "pids.json"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(a) for a in args], cwd=workspace.path, env=clean_env(), stdout=out, stderr=err)
        pids: dict[str, Any] = {}
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if not pids and pids_file.exists():
                    with contextlib.suppress(ValueError, OSError):  # caught mid-replace: read it again
                        pids = json.loads(pids_file.read_text())
                        workspace.servers.append(pids)
                time.sleep(0.05)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the demo stops its servers on the way out
                proc.wait(30)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()), pids


def _summary(stdout: str) -> dict[str, str]:
    """The demo's github-style summary table as {label: count}."""
    rows: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
    return rows


def _assert_demo_cleaned_up(state: Path, pids: dict[str, Any], result: subprocess.CompletedProcess[str]) -> None:
    assert pids, f"never saw {state / 'pids.json'} while the demo ran\n{_output(result)}"
    assert not (state / "pids.json").exists(), "pids.json left behind"
    for server in ("postgres", "sqs"):
        assert not _alive(pids[server]["pid"]), f"{server} (pid {pids[server]['pid']}) still running"
    assert processes_mentioning(str(state)) == []


def test_demo_runs_the_whole_stack_twice_and_leaves_nothing_running(demo_workspace: DemoWorkspace) -> None:
    state = demo_workspace.path / "state"

    first, first_pids = _run_demo(demo_workspace, state)

    assert first.returncode == 0, _output(first)
    summary = _summary(first.stdout)
    assert summary.get("loaded") == "40", first.stdout
    assert summary.get("rejected") == "0", first.stdout
    assert int(summary["IP tokens seen more than once"]) > 0, "synthetic traffic shares IPs between users"
    assert summary.get("rows in user_logins") == "40"
    assert summary.get("left in login-queue") == "0"
    _assert_demo_cleaned_up(state, first_pids, first)
    key_file = state / "dev_masking.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert "created a development masking key" in first.stderr

    second, second_pids = _run_demo(demo_workspace, state)

    assert second.returncode == 0, _output(second)
    assert key_file.read_bytes() == key, "the second run must keep the key, or tokens stop being comparable"
    assert "using the development masking key" in second.stderr
    assert _summary(second.stdout).get("rows in user_logins") == "80", "the Postgres data of the first run is reused"
    _assert_demo_cleaned_up(state, second_pids, second)


# --- dagster asset materialize ------------------------------------------------------------------


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _materialize(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([BIN / "dagster", "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"], env)


def _pipeline_env(
    sqs_endpoint: str, queue_urls: QueueUrls, database_url: str, home: Path, **settings: str
) -> dict[str, str]:
    return pipeline_env(sqs_endpoint, queue_urls, database_url, DAGSTER_HOME=str(home), **settings)


def test_dagster_asset_materialize_loads_rejects_and_is_idempotent(
    tmp_path: Path, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(30, seed=4, malformed_rate=0), FOO_BAR])
    env = _pipeline_env(sqs_endpoint, queue_urls, database_url, _dagster_home(tmp_path), PII_MASKING_KEY=TEST_KEY_HEX)

    first = _materialize(env)

    assert first.returncode == 0, _output(first)
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == 30
    assert fetch_all(database_url, "SELECT reason_code FROM user_logins_rejected") == [("not_a_login",)]
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert [m["Body"] for m in drain(sqs_client, queue_urls.dlq_url)] == [FOO_BAR]

    second = _materialize(env)

    assert second.returncode == 0, _output(second)
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == 30


def test_dagster_asset_materialize_without_a_key_fails_and_receives_nothing(
    tmp_path: Path, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(6, seed=5, malformed_rate=0))

    result = _materialize(_pipeline_env(sqs_endpoint, queue_urls, database_url, _dagster_home(tmp_path)))

    assert result.returncode != 0, _output(result)
    assert "PII_MASKING_KEY" in result.stdout + result.stderr
    assert queue_counts(sqs_client, queue_urls.queue_url) == (6, 0)


# --- fetch-etl seed -----------------------------------------------------------------------------


def test_seed_sends_synthetic_logins(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls) -> None:
    result = _fetch_etl(
        "seed", "--queue-url", queue_urls.queue_url, "--count", 25, "--seed", 3, env=aws_env(sqs_endpoint)
    )

    assert result.returncode == 0, _output(result)
    assert f"sent 25 messages to {queue_urls.queue_url}" in result.stdout
    assert queue_counts(sqs_client, queue_urls.queue_url) == (25, 0)


def test_seed_sends_each_non_empty_line_of_a_file(
    tmp_path: Path, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    bodies = [*generate_bodies(3, seed=6, malformed_rate=0), FOO_BAR]
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text(f"{bodies[0]}\n\n{bodies[1]}\n   \n{bodies[2]}\n{bodies[3]}\n", encoding="utf-8")

    result = _fetch_etl("seed", "--queue-url", queue_urls.queue_url, "--file", jsonl, env=aws_env(sqs_endpoint))

    assert result.returncode == 0, _output(result)
    assert "sent 4 messages" in result.stdout
    assert sorted(m["Body"] for m in drain(sqs_client, queue_urls.queue_url)) == sorted(bodies)


def test_seed_needs_exactly_one_source(tmp_path: Path, sqs_endpoint: str, queue_urls: QueueUrls) -> None:
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text(FOO_BAR + "\n")
    base = [BIN / "fetch-etl", "seed", "--queue-url", queue_urls.queue_url]
    env = aws_env(sqs_endpoint)
    # Both invocations at once: each spends most of its time importing Dagster.
    procs = {
        name: subprocess.Popen(
            [str(a) for a in args], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in {"both": [*base, "--count", "2", "--file", jsonl], "neither": base}.items()
    }
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stdout}\n{stderr}"
        assert "exactly one of --count N or --file" in stderr, f"{name}: {stderr}"
        assert "sent" not in stdout


def test_seed_to_an_unreachable_queue_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    queue_url = f"http://127.0.0.1:{port}/000000000000/login-queue"

    result = _fetch_etl("seed", "--queue-url", queue_url, "--count", 5, env=clean_env())

    assert result.returncode == 1, _output(result)
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot send messages on queue")
    assert queue_url in line and f"endpoint http://127.0.0.1:{port}" in line


def test_seed_reads_the_queue_url_from_the_environment_like_the_other_commands(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    env = {**aws_env(sqs_endpoint), "SQS_QUEUE_URL": queue_urls.queue_url}

    result = _fetch_etl("seed", "--count", 4, "--seed", 8, env=env)

    assert result.returncode == 0, _output(result)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (4, 0)


@pytest.mark.parametrize("command", ["reveal", "rotate-key"])
def test_an_unknown_masking_mode_is_a_usage_error_naming_the_choices(command: str) -> None:
    result = _fetch_etl(command, "--mode", "sha1", env=clean_env())

    assert result.returncode == 2, _output(result)
    assert "'sha1' is not one of 'hmac', 'siv'" in result.stderr


# --- fetch-etl dev ------------------------------------------------------------------------------


def test_dev_runs_dagster_by_module_name_so_any_install_finds_the_definitions() -> None:
    from fetch_etl.cli import dagster_dev_command

    command = dagster_dev_command(3123)

    assert command[1:4] == ["dev", "-m", "fetch_etl.definitions"]
    assert "-w" not in command and not [part for part in command if "workspace.yaml" in part], (
        "no workspace file: a normal install has no checkout to find it in"
    )
    assert command[-4:] == ["-h", "127.0.0.1", "-p", "3123"]


def test_dev_is_not_hijacked_by_a_compose_env_file_in_the_working_directory(demo_workspace: DemoWorkspace) -> None:
    """After the README's `cp .env.example .env`, Dagster's CLI would load container host names over the
    local stack's settings; `fetch-etl dev` started from that directory must still drain its own queue."""
    from fetch_etl.local.stack import local_stack_env

    shutil.copy(PROJECT_ROOT / ".env.example", demo_workspace.path / ".env")
    state = demo_workspace.path / "state"
    log = demo_workspace.path / "dev.log"
    args = ["dev", "--messages", "3", "--port", str(closed_port()), "--state-dir", str(state)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "fetch-etl"), *args],
            cwd=demo_workspace.path,
            env=clean_env(LOGIN_QUEUE_SENSOR_INTERVAL="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rows, deadline = 0, time.monotonic() + 300  # generous: dev starts three Dagster processes on 2 shared cores
    try:
        while rows < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(2)
            with contextlib.suppress(Exception):  # the stack, then the table, appear as dev starts
                rows = len(fetch_all(local_stack_env(state)["DATABASE_URL"], "SELECT user_id FROM user_logins"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert rows == 3, log.read_text(errors="replace")[-12000:]
    assert "Loaded environment variables from .env" not in log.read_text(errors="replace")
    _gone, alive = psutil.wait_procs(processes_mentioning(str(state)), timeout=30)  # children exit after dev
    assert not alive, f"dev left processes of its stack running: {[p.cmdline() for p in alive]}"
