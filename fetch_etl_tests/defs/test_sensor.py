"""`login_queue_sensor` against moto's SQS server: it only reads the queue depth and never starts a second ingest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import create_run_for_test, instance_for_test

from fetch_etl.definitions import defs
from fetch_etl.defs.automation import (
    DAEMON_WAKE_SECONDS,
    DEFAULT_INTERVAL_SECONDS,
    INGEST_JOB_NAME,
    INGEST_POOL,
    INGEST_TAGS,
    login_queue_sensor,
    max_parallel_runs,
    minimum_interval_seconds,
    runs_wanted,
    sensor_interval,
)
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.resource import SqsResource
from fetch_etl_tests.helpers import closed_port, queue_counts, send, sqs_resource


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _origin(job_name: str) -> RemoteJobOrigin:
    """Where a QUEUED run says it comes from, as the run coordinator records it."""
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("fetch_etl"), "__repository__")
    return RemoteJobOrigin(repository, job_name)


def _create_run(instance: DagsterInstance, status: DagsterRunStatus, job_name: str) -> DagsterRun:
    """A run of some job outside this project (no step in any pool)."""
    origin = _origin(job_name) if status == DagsterRunStatus.QUEUED else None
    run = create_run_for_test(instance, job_name=job_name, status=status, remote_job_origin=origin)
    assert run.status == status and run.run_op_concurrency is None
    return run


def _create_ingest_run(
    instance: DagsterInstance, status: DagsterRunStatus, selection: Iterable[str] | None = None
) -> DagsterRun:
    """A run planned from our real definitions, as Dagster creates it: of `ingest_logins`, or, with a
    selection, of the implicit asset job the UI's 'Materialize' / 'Materialize all' launches."""
    if selection is None:
        job = defs().resolve_job_def(INGEST_JOB_NAME)
        assets = None
    else:
        job = defs().resolve_implicit_global_asset_job_def()
        assets = frozenset(AssetKey(name) for name in selection)
    origin = _origin(job.name) if status == DagsterRunStatus.QUEUED else None
    run = instance.create_run_for_job(job, status=status, asset_selection=assets, remote_job_origin=origin)
    assert run.status == status
    return run


def _tick(instance: DagsterInstance, sqs: SqsResource) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources={"sqs": sqs}) as context:
        result = login_queue_sensor(context)
    assert isinstance(result, SensorResult | SkipReason), result
    return result


def _skip_message(result: Any) -> str:
    assert isinstance(result, SkipReason), f"expected a SkipReason, got {result!r}"
    assert result.skip_message is not None
    return result.skip_message


def _run_requests(result: Any) -> list[RunRequest]:
    assert isinstance(result, SensorResult), f"expected a SensorResult, got {result!r}"
    return list(result.run_requests or [])


def test_empty_queue_skips_and_states_the_depth(
    instance: DagsterInstance, sqs_endpoint: str, queue_urls: QueueUrls
) -> None:
    message = _skip_message(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))
    assert "0 visible" in message
    assert "empty" in message


def test_messages_request_one_run_without_touching_the_queue(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(7, seed=11))
    assert queue_counts(sqs_client, queue_urls.queue_url) == (7, 0)

    (request,) = _run_requests(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))

    assert request.tags.get("fetch_etl/queue_depth") == "7"
    assert request.job_name in (None, INGEST_JOB_NAME)  # None: the sensor's own job, ingest_logins
    assert queue_counts(sqs_client, queue_urls.queue_url) == (7, 0), "the sensor received or deleted messages"


@pytest.mark.parametrize("status", [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED])
def test_an_active_ingest_run_blocks_a_new_request(
    status: DagsterRunStatus, instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(3, seed=12))
    active = _create_ingest_run(instance, status)

    message = _skip_message(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))

    assert active.run_id in message
    assert "3 messages waiting" in message
    assert queue_counts(sqs_client, queue_urls.queue_url) == (3, 0)


@pytest.mark.parametrize(
    "selection", [("raw_login_messages", "masked_logins", "user_logins"), ("user_logins",)], ids=["all", "table"]
)
def test_a_running_materialize_from_the_ui_counts_as_active_by_its_pool(
    selection: tuple[str, ...], instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(2, seed=13))
    active = _create_ingest_run(instance, DagsterRunStatus.STARTED, selection)
    assert active.job_name != INGEST_JOB_NAME and active.tags.get(next(iter(INGEST_TAGS))) is None

    assert active.run_id in _skip_message(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))


def test_finished_and_unrelated_runs_do_not_block(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(4, seed=14))
    _create_ingest_run(instance, DagsterRunStatus.SUCCESS)
    _create_ingest_run(instance, DagsterRunStatus.FAILURE)
    _create_run(instance, DagsterRunStatus.STARTED, "some_other_job")
    _create_run(instance, DagsterRunStatus.QUEUED, "another_job")

    assert len(_run_requests(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))) == 1


def test_an_active_ingest_run_is_found_behind_many_other_active_runs(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(2, seed=15))
    active = _create_ingest_run(instance, DagsterRunStatus.STARTED)
    for _ in range(100):  # e.g. a backfill of another job waiting in the run queue
        _create_run(instance, DagsterRunStatus.STARTED, "some_other_job")

    result = _tick(instance, sqs_resource(sqs_endpoint, queue_urls))

    assert isinstance(result, SkipReason), "a second ingest run was requested while one is still running"
    assert active.run_id in _skip_message(result)


def test_unreachable_queue_skips_with_a_reason_instead_of_raising(instance: DagsterInstance) -> None:
    port = closed_port()
    sqs = SqsResource(queue_url=f"http://127.0.0.1:{port}/000000000000/login-queue", max_attempts=1)

    message = _skip_message(_tick(instance, sqs))

    assert "queue not reachable" in message
    assert f"127.0.0.1:{port}" in message


def test_sensor_is_defined_for_the_ingest_job_with_the_default_interval() -> None:
    sensor_def = defs().resolve_sensor_def("login_queue_sensor")
    assert sensor_def.job_name == INGEST_JOB_NAME
    assert sensor_def.default_status == DefaultSensorStatus.RUNNING
    assert DEFAULT_INTERVAL_SECONDS == 5
    assert sensor_interval() == 5, "LOGIN_QUEUE_SENSOR_INTERVAL must be unset while the test suite imports fetch_etl"
    assert sensor_def.minimum_interval_seconds == minimum_interval_seconds(5) == 4


def test_minimum_interval_ticks_on_the_daemons_wake() -> None:
    """Dagster's sensor daemon wakes every 5 s: a multiple of 5 asks one second less, so every wake ticks."""
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    assert MIN_INTERVAL_LOOP_TIME == DAEMON_WAKE_SECONDS, "Dagster's sensor daemon wakes at another pace now"
    assert [minimum_interval_seconds(i) for i in (1, 4, 5, 7, 10, 30, 31)] == [1, 4, 4, 7, 9, 29, 31]


def test_sensor_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGIN_QUEUE_SENSOR_INTERVAL", raising=False)
    assert sensor_interval() == 5
    monkeypatch.setenv("LOGIN_QUEUE_SENSOR_INTERVAL", "7")
    assert sensor_interval() == 7


def test_max_parallel_runs_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQS_MAX_PARALLEL_RUNS", raising=False)
    assert max_parallel_runs() == 1
    monkeypatch.setenv("SQS_MAX_PARALLEL_RUNS", "4")
    assert max_parallel_runs() == 4


@pytest.mark.parametrize(("cap", "active_runs", "expected"), [("4", 0, 3), ("4", 2, 1), (None, 0, 1), ("2", 0, 2)])
def test_a_backlog_fans_out_to_one_run_per_batch_up_to_the_cap(
    cap: str | None,
    active_runs: int,
    expected: int,
    instance: DagsterInstance,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if cap is None:
        monkeypatch.delenv("SQS_MAX_PARALLEL_RUNS", raising=False)
    else:
        monkeypatch.setenv("SQS_MAX_PARALLEL_RUNS", cap)
    send(sqs_client, queue_urls.queue_url, generate_bodies(25, seed=16))
    for _ in range(active_runs):
        _create_ingest_run(instance, DagsterRunStatus.STARTED)

    requests = _run_requests(_tick(instance, sqs_resource(sqs_endpoint, queue_urls, max_messages_per_run=10)))

    assert len(requests) == expected
    (ingest_key,) = INGEST_TAGS
    assert all(r.tags[ingest_key] == INGEST_TAGS[ingest_key] and r.run_key is None for r in requests)
    assert all(r.tags["fetch_etl/queue_depth"] == "25" for r in requests)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (25, 0)


def test_no_request_once_the_active_runs_cover_the_backlog(
    instance: DagsterInstance,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SQS_MAX_PARALLEL_RUNS", "4")
    send(sqs_client, queue_urls.queue_url, generate_bodies(25, seed=17))
    active = [_create_ingest_run(instance, DagsterRunStatus.QUEUED) for _ in range(3)]

    message = _skip_message(_tick(instance, sqs_resource(sqs_endpoint, queue_urls, max_messages_per_run=10)))

    assert "25 messages waiting" in message and "3 of 3 wanted" in message
    assert all(run.run_id in message for run in active)


def test_runs_wanted_is_ceil_of_depth_over_per_run_capped() -> None:
    assert [runs_wanted(depth, 10, 4) for depth in (1, 10, 11, 25, 40, 41, 10_000)] == [1, 1, 2, 3, 4, 4, 4]
    assert runs_wanted(25, 10, 1) == 1


def test_every_step_that_touches_the_queue_is_in_the_ingest_pool() -> None:
    pools = {name: defs().resolve_assets_def(name).op.pool for name in ("raw_login_messages", "user_logins")}
    assert pools == {"raw_login_messages": INGEST_POOL, "user_logins": INGEST_POOL}


@pytest.mark.parametrize("cap", ["1", "3"])
def test_each_tick_keeps_the_pool_limit_at_sqs_max_parallel_runs(
    cap: str, sqs_endpoint: str, queue_urls: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQS_MAX_PARALLEL_RUNS", cap)
    with instance_for_test() as instance:  # on-disk storage: pools supported, as in any deployment
        assert instance.event_log_storage.supports_global_concurrency_limits
        instance.event_log_storage.set_concurrency_slots(INGEST_POOL, 7)  # set by hand, or left from before

        _skip_message(_tick(instance, sqs_resource(sqs_endpoint, queue_urls)))  # an empty queue: a skip

        assert instance.event_log_storage.get_concurrency_info(INGEST_POOL).slot_count == int(cap)
