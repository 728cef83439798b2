"""The Compose topology without Docker: the project's deploy/dagster.yaml on a real PostgreSQL, a gRPC code
server (the `user-code` container's command), and `dagster-daemon run` on deploy/workspace.yaml.

The sensor sees the reference sample on a queue behind the old-LocalStack double, the daemon queues and
launches the run through the QueuedRunCoordinator, the code server runs it, and the run, its queue events
and the daemon's heartbeats are recorded in the Postgres-backed instance.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psutil
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from fetch_etl.defs.automation import INGEST_JOB_NAME, INGEST_POOL, INGEST_TAGS
from fetch_etl.local.servers import create_database, drop_database
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl_tests.deploy_env import ROOT, dagster_home, dagster_pg_env
from fetch_etl_tests.helpers import FOO_BAR, TEST_KEY_HEX, clean_env, fetch_all, pipeline_env, queue_counts, send
from fetch_etl_tests.legacy_sqs import LegacySqsDouble

BIN = Path(sys.executable).parent
DEADLINE_SECONDS = 150


@pytest.fixture
def warehouse_url(postgres_server_url: str) -> Iterator[str]:
    """A second fresh database: the warehouse, apart from Dagster's own storage."""
    name = f"w_{uuid4().hex[:12]}"
    url = create_database(postgres_server_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


class Processes:
    """Child processes started by this test, each with a log file; stopped by their PIDs, children first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        self.started.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.started)

    def stop(self) -> None:
        for proc, _log in reversed(self.started):
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            for process in [proc, *children]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.terminate()
            _gone, alive = psutil.wait_procs([psutil.Process(p.pid) for p in children if p.is_running()], timeout=10)
            for process in alive:
                process.kill()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_daemon_launches_a_sensor_run_through_the_queue_and_records_it_in_postgres(
    legacy_sqs: LegacySqsDouble,
    sqs_client: object,
    queue_urls: QueueUrls,
    database_url: str,
    warehouse_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = send(sqs_client, queue_urls.queue_url, [*generate_bodies(99, seed=4566, malformed_rate=0), FOO_BAR])
    via_double = QueueUrls(legacy_sqs.queue_url(queue_urls.queue_url), legacy_sqs.queue_url(queue_urls.dlq_url))
    instance_env = {"DAGSTER_HOME": str(dagster_home(tmp_path, ROOT / "deploy" / "dagster.yaml"))}
    instance_env |= dagster_pg_env(database_url)
    key_file = tmp_path / "pii_masking_key"  # as the Compose secret would be mounted
    key_file.write_text(TEST_KEY_HEX + "\n")
    # The code server listens on a Unix socket of this test's own instead of a TCP port picked in advance:
    # no other process can take it between the choice and the bind. (Short path: sockets allow 107 bytes.)
    socket_path = Path(tempfile.mkdtemp(prefix="fetch-etl-grpc-")) / "grpc.sock"
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    server.pop("port")
    server.update(host="localhost", socket=str(socket_path))
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    code_env = pipeline_env(
        legacy_sqs.endpoint,
        via_double,
        warehouse_url,
        SQS_PROTOCOL="auto",
        PII_MASKING_KEY_FILE=str(key_file),
        LOGIN_QUEUE_SENSOR_INTERVAL="1",
        **instance_env,
    )
    processes = Processes(tmp_path)
    try:
        processes.start(
            "user-code",
            [str(BIN / "dagster"), "api", "grpc", "-m", "fetch_etl.definitions", "-s", str(socket_path)],
            code_env,
            ROOT,
        )
        wait_for_code_server(socket_path, processes)  # as Compose's service_healthy condition does
        processes.start(
            "daemon",
            [str(BIN / "dagster-daemon"), "run", "--workspace", str(tmp_path / "workspace.yaml")],
            clean_env(**instance_env),
            tmp_path,
        )
        for key, value in instance_env.items():
            monkeypatch.setenv(key, value)
        with DagsterInstance.get() as instance:
            run = wait_for_finished_ingest_run(instance, processes)
            assert run.status == DagsterRunStatus.SUCCESS, processes.logs()
            assert run.tags["dagster/sensor_name"] == "login_queue_sensor"
            assert {k: run.tags[k] for k in INGEST_TAGS} == INGEST_TAGS
            # The run queue let it through its pool, whose limit the sensor keeps at SQS_MAX_PARALLEL_RUNS (1).
            assert run.run_op_concurrency is not None and INGEST_POOL in run.run_op_concurrency.all_pools
            assert instance.event_log_storage.get_concurrency_info(INGEST_POOL).slot_count == 1
            kinds = {e.dagster_event_type for e in instance.all_logs(run.run_id) if e.dagster_event_type}
            # Queued by the sensor, started by the run queue daemon, run by the code server.
            assert {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_SUCCESS} <= kinds
            assert DagsterEventType.ASSET_MATERIALIZATION in kinds
            heartbeats = set(instance.get_daemon_heartbeats())
            assert {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= heartbeats, heartbeats
    finally:
        processes.stop()
        shutil.rmtree(socket_path.parent, ignore_errors=True)

    loaded = {row[0] for row in fetch_all(warehouse_url, "SELECT message_id FROM user_logins")}
    assert loaded == set(ids[:99])
    assert fetch_all(warehouse_url, "SELECT reason_code FROM user_logins_rejected") == [("not_a_login",)]
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert legacy_sqs.json_rejected >= 1 and legacy_sqs.query_proxied > 10
    assert "speaks only the older query protocol" in (tmp_path / "user-code.log").read_text()


def wait_for_code_server(socket_path: Path, processes: Processes) -> None:
    """The user-code container's health check, until it passes."""
    deadline = time.monotonic() + 60
    check = [str(BIN / "dagster"), "api", "grpc-health-check", "--socket", str(socket_path)]
    while time.monotonic() < deadline:
        try:
            if subprocess.run(check, capture_output=True, timeout=30, env=clean_env()).returncode == 0:
                return
        except subprocess.TimeoutExpired:  # a loaded machine: one slow check is not a verdict
            pass
        time.sleep(1)
    pytest.fail(f"code server not healthy after 60s:\n{processes.logs()}")


def wait_for_finished_ingest_run(instance: DagsterInstance, processes: Processes) -> DagsterRun:
    """The first ingest run once it has finished (the sensor may start more; the first one loads all)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    while time.monotonic() < deadline:
        for proc, log in processes.started:
            assert proc.poll() is None, f"{log.name} exited early:\n{processes.logs()}"
        runs = instance.get_runs(RunsFilter(job_name=INGEST_JOB_NAME), ascending=True, limit=1)
        if runs and runs[0].status in finished:
            return runs[0]
        time.sleep(1)
    pytest.fail(f"no finished ingest run after {DEADLINE_SECONDS}s:\n{processes.logs()}")
