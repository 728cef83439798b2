"""Nothing lost, nothing doubled: crashes, outages and concurrent runs against real Postgres and SQS.

Every test ends with the invariant checked message by message: each message sent is exactly once either
in `user_logins` or in the rejects table (and then in the dead-letter queue), and the queue is empty.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from fetch_etl.defs.automation import login_queue_sensor
from fetch_etl.local.servers import EmbeddedPostgres, create_database
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse import load as warehouse_load
from fetch_etl_tests.fault_runner import KILL_POINTS
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NOT_JSON,
    TEST_KEY_HEX,
    drain,
    fetch_all,
    metadata,
    pipeline_env,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
    wait_until_none_in_flight,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def seed_batch(sqs_client: Any, queue_url: str, valid: int = 40, seed: int = 11) -> tuple[set[str], set[str]]:
    """Valid logins plus the two classic rejects; returns (valid ids, rejected ids)."""
    ids = send(sqs_client, queue_url, [*generate_bodies(valid, seed=seed, malformed_rate=0), FOO_BAR, NOT_JSON])
    return set(ids[:valid]), set(ids[valid:])


def assert_exactly_once(
    sqs_client: Any, queues: QueueUrls, database_url: str, valid: set[str], rejected: set[str]
) -> None:
    """The promise: every message exactly once in user_logins, or in the rejects table and the DLQ."""
    loaded = [row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")]
    recorded = [row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins_rejected")]
    dead = [m["MessageAttributes"]["original_message_id"]["StringValue"] for m in drain(sqs_client, queues.dlq_url)]
    assert sorted(loaded) == sorted(valid), "every valid message loaded exactly once"
    assert sorted(recorded) == sorted(rejected), "every reject recorded exactly once"
    assert sorted(dead) == sorted(rejected), "every reject dead-lettered exactly once"
    assert queue_counts(sqs_client, queues.queue_url) == (0, 0)


def _count(database_url: str, table: str, where: str = "") -> int:
    return int(fetch_all(database_url, f"SELECT count(*) FROM {table} {where}")[0][0])


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_any_stage_is_completed_by_the_next(
    point: str, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url)
    evidence_file = tmp_path / "evidence.json"
    env = pipeline_env(
        sqs_endpoint,
        queue_urls,
        database_url,
        PII_MASKING_KEY=TEST_KEY_HEX,
        SQS_VISIBILITY_TIMEOUT="6",  # receiving stops after 3 s at the latest: ample for 42 messages on moto
        FAULT_EVIDENCE=str(evidence_file),
    )
    killed = subprocess.run(
        [sys.executable, "-m", "fetch_etl_tests.fault_runner", point],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    evidence = json.loads(evidence_file.read_text()) if evidence_file.exists() else {}
    committed = point in ("after_commit", "mid_delete", "after_dead_letter")
    # Where the kill landed, from what it left behind.
    assert _count(database_url, "user_logins") == (len(valid) if committed else 0)
    assert _count(database_url, "user_logins_rejected") == (len(rejected) if committed else 0)
    if point == "mid_load":
        assert evidence == {"inserted": len(valid), "rows_in_open_transaction": len(valid)}, "killed inside the load"
    forwarded = point in ("mid_delete", "after_dead_letter")
    assert _count(database_url, "user_logins_rejected", "WHERE dead_lettered_at IS NOT NULL") == (
        len(rejected) if forwarded else 0
    )
    assert sum(queue_counts(sqs_client, queue_urls.dlq_url)) == (len(rejected) if forwarded else 0)
    total = len(valid) + len(rejected)
    if point == "mid_delete":
        assert evidence == {"deleted": total // 2, "held": total}, "half of the deletes went through"
    assert sum(queue_counts(sqs_client, queue_urls.queue_url)) == total - evidence.get("deleted", 0)

    # The killed run's visibility timeout (perhaps just extended by its heartbeat) runs out: SQS redelivers
    # what it held, and the next run completes the job without doing anything twice.
    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    done = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    assert done["loaded"] == (0 if committed else len(valid))
    if committed:  # every message whose outcome was stored is only acknowledged, never evaluated again
        stored = len(valid) + len(rejected) - evidence.get("deleted", 0)
        assert done["already_stored"] == stored, "committed rows and rejects are recognised from what is stored"
    assert done["dead_lettered"] == (0 if forwarded else len(rejected)), "no reject is forwarded twice"
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


class StoppablePostgres:
    """An embedded server of the test's own that can go down and come back on the same port.

    While it is down this process keeps the port bound (never listening): connections are refused, and no
    other program can take the port until the instant the server starts on it again.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = EmbeddedPostgres(data_dir)  # the server picks its first port itself
        self._held: socket.socket | None = None
        self.port = 0

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if self._held is not None:  # back on the port it had: the one this process holds
            self._server = EmbeddedPostgres(self.data_dir, port=self.port)
            self._held.close()
            self._held = None
        self.port = int(urlsplit(self._server.start()).port or 0)

    def stop(self) -> None:
        self._server.stop()
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's closed connections linger
        held.bind(("127.0.0.1", self.port))
        self._held = held

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
        else:
            self._server.stop()


@pytest.fixture
def stoppable_postgres() -> Iterator[StoppablePostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="fetch-etl-test-pg-"))
    server = StoppablePostgres(data_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _step_error(result: Any) -> str:
    failure = next(event for event in result.all_events if event.is_step_failure)
    return str(failure.step_failure_data.error)


def test_postgres_down_at_start_then_back_loads_everything(
    stoppable_postgres: StoppablePostgres, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    database_url = create_database(stoppable_postgres.url("postgres"), "warehouse")
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=20)
    stoppable_postgres.stop()

    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1)
    failed = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs), raise_on_error=False)
    assert not failed.success
    error = _step_error(failed)
    assert f"database 'warehouse' on 127.0.0.1:{stoppable_postgres.port}" in error
    assert queue_counts(sqs_client, queue_urls.queue_url) == (22, 0), "nothing received, nothing deleted"
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (0, 0), "nothing dead-lettered before a commit"

    stoppable_postgres.start()
    assert _sensor_requests_a_run(sqs_endpoint, queue_urls)
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


def _sensor_requests_a_run(sqs_endpoint: str, queue_urls: QueueUrls) -> bool:
    with DagsterInstance.ephemeral() as instance:
        resources = {"sqs": sqs_resource(sqs_endpoint, queue_urls)}
        with build_sensor_context(instance=instance, resources=resources) as context:
            result = login_queue_sensor(context)
    return isinstance(result, SensorResult) and len(result.run_requests or []) == 1


def test_postgres_going_down_mid_load_fails_clearly_and_deletes_nothing(
    stoppable_postgres: StoppablePostgres,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database_url = create_database(stoppable_postgres.url("postgres"), "warehouse")
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=20)
    original_insert: Callable[..., Any] = warehouse_load._insert_logins
    in_transaction: list[tuple[int, int]] = []

    def insert_then_stop_server(cur: Any, *args: Any, **kwargs: Any) -> Any:
        inserted, path = original_insert(cur, *args, **kwargs)
        in_transaction.append((inserted, cur.execute("SELECT count(*) FROM user_logins").fetchone()[0]))
        stoppable_postgres.stop()  # "fast" shutdown: the server aborts the open load transaction
        return inserted, path

    monkeypatch.setattr(warehouse_load, "_insert_logins", insert_then_stop_server)
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=3)
    failed = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs), raise_on_error=False)
    assert not failed.success
    assert "database 'warehouse' on 127.0.0.1:" in _step_error(failed)
    ((inserted, seen),) = in_transaction
    assert inserted == seen > 0, "the server went away inside the load, after the COPY, before the commit"
    monkeypatch.setattr(warehouse_load, "_insert_logins", original_insert)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)  # the failed run let go; back within 3 s
    assert queue_counts(sqs_client, queue_urls.queue_url) == (22, 0), "nothing deleted"
    stoppable_postgres.start()
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


@pytest.mark.parametrize("parallel", [2, 4])
def test_parallel_runs_on_one_queue_neither_lose_nor_double(
    parallel: int, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=200, seed=parallel)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"]
    processes = []
    for index in range(parallel):
        home = tmp_path / f"dagster_home_{index}"  # each process on a Dagster instance of its own
        home.mkdir()
        env = pipeline_env(
            sqs_endpoint,
            queue_urls,
            database_url,
            PII_MASKING_KEY=TEST_KEY_HEX,
            DAGSTER_HOME=str(home),
            SQS_VISIBILITY_TIMEOUT="10",  # the heartbeat keeps held messages; a lost delete returns soon
        )
        processes.append(
            subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    for process in processes:
        # A hang guard, not a speed limit: four Dagster processes start at once on 2 cores, which a loaded
        # machine (a clean-clone CI beside other work) once stretched past 180 s.
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr.decode()[-2000:]
    # moto's server can lose a DeleteMessageBatch that races another process's on the same queue (its queue
    # list is rebuilt without a lock): such a message comes back after the visibility timeout, as after any
    # lost delete on SQS, and the next run must skip it (already loaded / already dead-lettered).
    wait_until_none_in_flight(sqs_client, queue_urls.queue_url, timeout=40)
    loaded_by_them = len(fetch_all(database_url, "SELECT message_id FROM user_logins"))
    assert loaded_by_them > 0
    # What they left (a lost delete's message, or what came after a run's receive phase ended) the next
    # run takes: it loads exactly the rest, and the DLQ holds each reject once (assert_exactly_once).
    leftover = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    assert leftover["loaded"] == len(valid) - loaded_by_them
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)
