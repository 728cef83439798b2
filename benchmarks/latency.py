"""Latency benchmark: one message at a time through the deployed path, the sensor at its default interval.

    uv run python -m benchmarks.latency [--samples 5] [--localstack-python PATH] [--out-dir benchmarks/results]

LocalStack SQS and embedded PostgreSQL on 127.0.0.1, a local Dagster instance in a temporary DAGSTER_HOME
(the `fetch-etl dev` one: sqlite storage and Dagster's default run coordinator, the QueuedRunCoordinator),
`dagster api grpc -m fetch_etl.definitions` as the code server and `dagster-daemon run` on a workspace
pointing at it. Each sample sends ONE valid login at a random point of the sensor interval, polls Postgres
every 50 ms until its row is visible, then splits the wait with the run's tick, events and metadata.
Writes benchmarks/results/latency-<date>.json. Everything started is stopped by PID, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import yaml
from dagster import DagsterInstance
from tabulate import tabulate

from benchmarks import report
from benchmarks.localstack_env import LocalStackServer, ensure_localstack_python, localstack_version, stop_pid
from benchmarks.sensor_latency import COMPONENTS, breakdown, finished_run, sensor_ticks, summarize, table
from fetch_etl.defs.automation import DEFAULT_INTERVAL_SECONDS
from fetch_etl.local.servers import EmbeddedPostgres, _free_port, create_database
from fetch_etl.local.stack import DEV_DAGSTER_YAML, create_queue_pair, make_sqs_client
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl_tests.helpers import clean_env, pipeline_env

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.05


def _on_sigterm(*_: Any) -> NoReturn:
    raise KeyboardInterrupt


class Children:
    """Processes this benchmark started, each in its own session with a log; stopped by PID, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append((proc, log))

    def check(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        while self.procs:
            proc, _log = self.procs.pop()
            stop_pid(proc.pid, signal.SIGINT, timeout=15)
            proc.poll()


def _wait(what: str, done: Any, children: Children, timeout: float, every: float = 0.5) -> Any:
    """Poll `done()` until it returns something truthy; fail if a child died or the timeout passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        if value := done():
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (logs in {children.log_dir})")


def _row_visible(conn: psycopg.Connection, message_id: str) -> bool:
    try:
        return conn.execute("SELECT 1 FROM user_logins WHERE message_id = %s", (message_id,)).fetchone() is not None
    except psycopg.errors.UndefinedTable:  # the first run creates the table
        return False


def _sample(
    number: int,
    pause: float,
    sqs: Any,
    queue_url: str,
    conn: psycopg.Connection,
    instance: DagsterInstance,
    children: Children,
) -> dict[str, Any]:
    """Sleep `pause`, send one valid login, wait for its row and its run, and break the latency down."""
    time.sleep(pause)
    body = generate_bodies(1, seed=1000 + number, malformed_rate=0)[0]
    sent = time.time()
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"]
    _wait("row visible", lambda: _row_visible(conn, message_id), children, DEFAULT_INTERVAL_SECONDS + 180, POLL_SECONDS)
    visible = time.time()
    run_id = _wait("run finished", lambda: finished_run(instance, sent), children, 300)
    sample = {"sample": number, "pause_before_s": round(pause, 2), **breakdown(instance, run_id, sent, visible)}
    print(f"  sample {number}: enqueue -> visible {sample['enqueue_to_visible']:.2f} s (run {run_id[:8]})", flush=True)
    return sample


def run(args: argparse.Namespace, workdir: Path) -> int:
    interval = DEFAULT_INTERVAL_SECONDS  # the code server gets no LOGIN_QUEUE_SENSOR_INTERVAL (clean_env drops it)
    python = ensure_localstack_python(args.localstack_python)
    started_at = datetime.now(UTC)
    rng = random.Random(args.seed)
    samples: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pg = EmbeddedPostgres(workdir / "pg")
        stack.callback(pg.stop)
        pg_url = pg.start()
        localstack = LocalStackServer(python, workdir / "localstack")
        stack.callback(localstack.stop)
        localstack.start()
        sqs = make_sqs_client(localstack.endpoint)
        queues = create_queue_pair(sqs, "latency-logins")
        db_url = create_database(pg_url, "latency")
        home = workdir / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(DEV_DAGSTER_YAML)  # as `fetch-etl dev` writes it
        port = _free_port()
        workspace = {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "fetch_etl"}}]}
        (workdir / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        code_env = pipeline_env(
            localstack.endpoint, queues, db_url, PII_MASKING_KEY=secrets.token_hex(32), DAGSTER_HOME=str(home)
        )
        code_env.pop("SQS_DELETE_THREADS")  # a moto workaround in the tests; production default here
        children = Children(workdir)
        stack.callback(children.stop)
        grpc = [str(BIN / "dagster"), "api", "grpc", "-m", "fetch_etl.definitions", "-h", "127.0.0.1", "-p", str(port)]
        children.start("user-code", grpc, code_env, ROOT)
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "--host", "127.0.0.1", "--port", str(port)]
        _wait(
            "code server healthy",
            lambda: subprocess.run(health, capture_output=True, env=clean_env()).returncode == 0,
            children,
            90,
        )
        daemon = [str(BIN / "dagster-daemon"), "run", "--workspace", str(workdir / "workspace.yaml")]
        children.start("daemon", daemon, clean_env(DAGSTER_HOME=str(home)), workdir)
        instance = stack.enter_context(DagsterInstance.from_config(str(home)))
        coordinator = type(instance.run_coordinator).__name__
        _wait("first sensor tick", lambda: sensor_ticks(instance), children, interval + 90)
        print(f"stack up: LocalStack {localstack.endpoint}, sensor every {interval} s, {coordinator}", flush=True)
        conn = stack.enter_context(psycopg.connect(db_url, autocommit=True))
        for i in range(args.samples):
            samples.append(_sample(i + 1, rng.uniform(0, interval), sqs, queues.queue_url, conn, instance, children))
        tick_times = sorted(t.timestamp for t in sensor_ticks(instance))
        gaps = [b - a for a, b in itertools.pairwise(tick_times)]
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        machine = report.machine(python, localstack_version(python), pg_version)
    summary = summarize(samples)
    print(tabulate(table(summary), headers="keys", tablefmt="github", floatfmt=".3f"))
    observed = round(statistics.median(gaps), 2) if gaps else None
    print(f"sensor interval {interval} s (observed median tick gap {observed} s), {len(samples)} samples")
    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.latency " + " ".join(sys.argv[1:]),
        "machine": machine,
        "setup": {
            "deployment": "dagster api grpc -m fetch_etl.definitions + dagster-daemon run (workspace: grpc_server)",
            "instance": f"local sqlite DAGSTER_HOME, default run coordinator ({coordinator}), DefaultRunLauncher",
            "sensor_interval_seconds": interval,
            "observed_tick_gap_median_seconds": observed,
            "queue": "LocalStack SQS, 127.0.0.1",
            "database": "embedded PostgreSQL, 127.0.0.1",
            "poll_seconds": POLL_SECONDS,
        },
        "components": COMPONENTS,
        "summary": summary,
        "samples": samples,
    }
    path = args.out_dir / f"latency-{started_at.strftime('%Y-%m-%d')}.json"
    report.write_json(path, payload)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--localstack-python", default=None, help="interpreter with localstack-core installed")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=None, help="seed for the pauses between samples")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(".fetch_etl")
    root.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="latency-", dir=root)).resolve()
    began = time.monotonic()
    try:
        code = run(args, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        return code
    except KeyboardInterrupt:
        print(f"interrupted; everything started was stopped; logs kept in {workdir}", file=sys.stderr)
        return 130
    except Exception:
        print(f"failed; everything started was stopped; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        print(f"benchmark took {time.monotonic() - began:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
