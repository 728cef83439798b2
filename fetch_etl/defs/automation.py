"""The ingest job `ingest_logins` and `login_queue_sensor`, which starts it when the queue has messages.

The job: the three login assets, in one process so the batch never leaves memory.

The sensor only reads the queue's approximate depth: it never receives or deletes, so a sensor tick can
never make a message invisible or lose one. A backlog larger than one run's batch fans out to up to
SQS_MAX_PARALLEL_RUNS concurrent runs (default 1); SQS visibility keeps their batches apart and the
idempotent load makes any overlap harmless.
"""

import math
import os

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    in_process_executor,
    sensor,
)

from fetch_etl.queue.messages import QueueError
from fetch_etl.queue.resource import SqsResource

INGEST_JOB_NAME = "ingest_logins"
INGEST_TAGS = {"fetch_etl/ingest": "login-queue"}  # the run coordinator's concurrency key

ingest_logins_job = define_asset_job(
    INGEST_JOB_NAME,
    selection=AssetSelection.groups("logins"),
    executor_def=in_process_executor,
    tags=INGEST_TAGS,
    description="Receive a batch from SQS, mask it, load it into user_logins, then ack the queue.",
)

DEFAULT_INTERVAL_SECONDS = 5  # a tick is one GetQueueAttributes call: cheap, and it bounds latency
DEFAULT_MAX_PARALLEL_RUNS = 1
ASSET_JOB_NAME = "__ASSET_JOB"  # what the UI's "Materialize all" launches
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def sensor_interval() -> int:
    """LOGIN_QUEUE_SENSOR_INTERVAL (seconds between ticks), default DEFAULT_INTERVAL_SECONDS."""
    return int(os.environ.get("LOGIN_QUEUE_SENSOR_INTERVAL", DEFAULT_INTERVAL_SECONDS))


def max_parallel_runs() -> int:
    """SQS_MAX_PARALLEL_RUNS (ingest runs at once), default 1; read each tick so a change needs no reload."""
    return max(1, int(os.environ.get("SQS_MAX_PARALLEL_RUNS", DEFAULT_MAX_PARALLEL_RUNS)))


def runs_wanted(visible: int, batch: int, cap: int) -> int:
    """k = min(ceil(depth / batch), cap): enough runs for the backlog, never more than the cap."""
    return min(math.ceil(visible / max(1, batch)), cap)


def active_ingest_run_ids(context: SensorEvaluationContext, limit: int) -> list[str]:
    """Up to `limit` ingest runs (sensor, job or 'Materialize all') that are queued or in progress."""
    found = [
        record.dagster_run.run_id
        for record in context.instance.get_run_records(
            RunsFilter(job_name=INGEST_JOB_NAME, statuses=ACTIVE_STATUSES), limit=limit
        )
    ]
    if len(found) < limit:
        for record in context.instance.get_run_records(RunsFilter(job_name=ASSET_JOB_NAME, statuses=ACTIVE_STATUSES)):
            if AssetKey("user_logins") in (record.dagster_run.asset_selection or set()):
                found.append(record.dagster_run.run_id)
                if len(found) == limit:
                    break
    return found


@sensor(
    job=ingest_logins_job,
    minimum_interval_seconds=sensor_interval(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests ingest runs when login-queue holds messages: one per batch of backlog, up to "
    "SQS_MAX_PARALLEL_RUNS (default 1) counting those already queued or running.",
)
def login_queue_sensor(context: SensorEvaluationContext, sqs: SqsResource) -> SensorResult | SkipReason:
    try:
        depth = sqs.depth()
    except QueueError as err:
        return SkipReason(f"queue not reachable, will retry next tick: {err}")
    if depth.visible == 0:
        return SkipReason(f"queue is empty: 0 visible, {depth.in_flight} in flight, {depth.delayed} delayed")
    wanted = runs_wanted(depth.visible, sqs.max_messages_per_run, max_parallel_runs())
    active = active_ingest_run_ids(context, wanted)
    if len(active) >= wanted:
        return SkipReason(
            f"{depth.visible} messages waiting; ingest run {', '.join(active)} is still queued or running "
            f"({len(active)} of {wanted} wanted)"
        )
    tags = {**INGEST_TAGS, "fetch_etl/queue_depth": str(depth.visible)}
    return SensorResult(run_requests=[RunRequest(tags=tags) for _ in range(wanted - len(active))])
