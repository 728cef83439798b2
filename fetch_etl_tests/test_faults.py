"""Nothing lost, nothing doubled: crashes, outages and concurrent runs against real Postgres and SQS.

Every test ends with the invariant checked message by message: each message sent is exactly once either
in `user_logins` or in the rejects table (and then in the dead-letter queue), and the queue is empty.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from fetch_etl import assets
from fetch_etl.local_servers import EmbeddedPostgres, create_database
from fetch_etl.local_stack import QueueUrls
from fetch_etl.sensors import login_queue_sensor
from fetch_etl.synthetic import generate_bodies
from fetch_etl_tests.fault_runner import KILL_POINTS
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NOT_JSON,
    TEST_KEY_HEX,
    closed_port,
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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_any_stage_is_completed_by_the_next(
    point: str, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url)
    env = pipeline_env(sqs_endpoint, queue_urls, database_url, PII_MASKING_KEY=TEST_KEY_HEX, SQS_VISIBILITY_TIMEOUT="2")
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
    if point in ("after_receive", "after_mask"):
        assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == 0, "nothing loaded yet"

    # The killed run's visibility timeout (2 s, perhaps just extended by its heartbeat) runs out: SQS
    # redelivers what it held.
    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


@pytest.fixture
def stoppable_postgres() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own, so it can be stopped and started again."""
    data_dir = Path(tempfile.mkdtemp(prefix="fetch-etl-test-pg-"))
    server = EmbeddedPostgres(data_dir, port=closed_port())  # a fixed port: restarts keep the URL
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _step_error(result: Any) -> str:
    failure = next(event for event in result.all_events if event.is_step_failure)
    return str(failure.step_failure_data.error)


def test_postgres_down_at_start_then_back_loads_everything(
    stoppable_postgres: EmbeddedPostgres, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    database_url = create_database(stoppable_postgres.url, "warehouse")
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=20)
    port = database_url.rsplit(":", 1)[1].split("/")[0]
    stoppable_postgres.stop()

    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1)
    failed = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs), raise_on_error=False)
    assert not failed.success
    error = _step_error(failed)
    assert f"database 'warehouse' on 127.0.0.1:{port}" in error
    time.sleep(1.5)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (22, 0), "nothing deleted"
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
    stoppable_postgres: EmbeddedPostgres,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database_url = create_database(stoppable_postgres.url, "warehouse")
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=20)
    original_load: Callable[..., Any] = assets.load_batch

    def stop_server_then_load(*args: Any, **kwargs: Any) -> Any:
        stoppable_postgres.stop()  # the server goes away between the migration and the COPY
        return original_load(*args, **kwargs)

    monkeypatch.setattr(assets, "load_batch", stop_server_then_load)
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1)
    failed = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs), raise_on_error=False)
    assert not failed.success
    assert "database 'warehouse' on 127.0.0.1:" in _step_error(failed)
    monkeypatch.setattr(assets, "load_batch", original_load)

    time.sleep(1.5)
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
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr.decode()[-2000:]
    # moto's server can lose a DeleteMessageBatch that races another process's on the same queue (its queue
    # list is rebuilt without a lock): such a message comes back after the visibility timeout, as after any
    # lost delete on SQS, and the next run must skip it (already loaded / already dead-lettered).
    wait_until_none_in_flight(sqs_client, queue_urls.queue_url, timeout=40)
    leftover = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    assert leftover["loaded"] == 0, "the parallel runs drained the queue between them"
    assert leftover["dead_lettered"] == 0, "no reject is forwarded twice"
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)
