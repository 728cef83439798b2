"""The ingest job `ingest_logins` and `login_queue_sensor`, which starts it when the queue has messages.

The job: the three login assets, in one process so a run's messages never leave memory.

The sensor only reads the queue's approximate depth: it never receives or deletes, so a sensor tick can
never make a message invisible or lose one. A backlog larger than one run takes (SQS_MAX_MESSAGES_PER_RUN)
fans out to up to SQS_MAX_PARALLEL_RUNS concurrent runs (default 1); SQS visibility keeps their messages apart and the
idempotent load makes any overlap harmless. Overlap is bounded by Dagster itself, not by run names: every
step that touches the queue is in the concurrency pool INGEST_POOL, whose limit the sensor keeps equal to
SQS_MAX_PARALLEL_RUNS, and the run queue (pool granularity `run`) starts no run beyond it.
"""

import math
import os

from dagster import (
    AssetSelection,
    DagsterInstance,
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
INGEST_TAGS = {"fetch_etl/ingest": "login-queue"}  # marks the runs this job and the sensor start
# The concurrency pool of every step that receives from or acknowledges login-queue. With the instance's
# `concurrency: pools: granularity: run`, the run queue counts each run that contains such a step once,
# whoever started it (the sensor, this job, the UI's "Materialize all"); the sensor keeps the pool's limit
# equal to SQS_MAX_PARALLEL_RUNS.
INGEST_POOL = "login_queue"

ingest_logins_job = define_asset_job(
    INGEST_JOB_NAME,
    selection=AssetSelection.groups("logins"),
    executor_def=in_process_executor,
    tags=INGEST_TAGS,
    description="Receive a run's messages from SQS, mask them, load them into user_logins, then ack the queue.",
)

DEFAULT_INTERVAL_SECONDS = 5  # a tick is one GetQueueAttributes call: cheap, and it bounds latency
DEFAULT_MAX_PARALLEL_RUNS = 1
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


DAEMON_WAKE_SECONDS = 5  # Dagster's sensor daemon evaluates its sensors every 5 s (MIN_INTERVAL_LOOP_TIME)


def minimum_interval_seconds(interval: int) -> int:
    """The sensor's Dagster minimum_interval_seconds for ticks `interval` seconds apart.

    The sensor daemon wakes every DAEMON_WAKE_SECONDS and ticks a sensor once at least its minimum has passed
    since the last tick. A minimum that is a multiple of the wake lands on the wake itself and loses to its
    jitter about half the time: with 5, ticks came 5 and 10 s apart in turn (7.4 s on average, see
    docs/performance.md). One second less ticks on that wake, `interval` apart; other intervals wait for the
    next wake either way, so they are left as they are.
    """
    if interval >= DAEMON_WAKE_SECONDS and interval % DAEMON_WAKE_SECONDS == 0:
        return interval - 1
    return interval


def max_parallel_runs() -> int:
    """SQS_MAX_PARALLEL_RUNS (ingest runs at once), default 1; read each tick so a change needs no reload."""
    return max(1, int(os.environ.get("SQS_MAX_PARALLEL_RUNS", DEFAULT_MAX_PARALLEL_RUNS)))


def runs_wanted(visible: int, per_run: int, cap: int) -> int:
    """k = min(ceil(depth / per_run), cap): enough runs for the backlog, never more than the cap."""
    return min(math.ceil(visible / max(1, per_run)), cap)


def active_ingest_run_ids(context: SensorEvaluationContext, limit: int) -> list[str]:
    """Up to `limit` queued or in-progress runs with a step in INGEST_POOL, whoever launched them."""
    found = []
    for record in context.instance.get_run_records(RunsFilter(statuses=ACTIVE_STATUSES)):
        concurrency = record.dagster_run.run_op_concurrency
        if concurrency is not None and INGEST_POOL in (concurrency.all_pools or ()):
            found.append(record.dagster_run.run_id)
            if len(found) == limit:
                break
    return found


def keep_pool_limit(instance: DagsterInstance, limit: int) -> None:
    """Make INGEST_POOL's slot count `limit`, so SQS_MAX_PARALLEL_RUNS is the one knob for concurrent ingest."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return  # an instance without pools (in-memory storage): nothing to keep
    if storage.get_concurrency_info(INGEST_POOL).slot_count != limit:
        storage.set_concurrency_slots(INGEST_POOL, limit)


@sensor(
    job=ingest_logins_job,
    minimum_interval_seconds=minimum_interval_seconds(sensor_interval()),
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests ingest runs when login-queue holds messages: one per run's worth of backlog, up to "
    "SQS_MAX_PARALLEL_RUNS (default 1) counting those already queued or running.",
)
def login_queue_sensor(context: SensorEvaluationContext, sqs: SqsResource) -> SensorResult | SkipReason:
    cap = max_parallel_runs()
    keep_pool_limit(context.instance, cap)  # every tick, so UI runs are bounded before the first backlog too
    try:
        depth = sqs.depth()
    except QueueError as err:
        return SkipReason(f"queue not reachable, will retry next tick: {err}")
    if depth.visible == 0:
        return SkipReason(f"queue is empty: 0 visible, {depth.in_flight} in flight, {depth.delayed} delayed")
    wanted = runs_wanted(depth.visible, sqs.max_messages_per_run, cap)
    active = active_ingest_run_ids(context, wanted)
    if len(active) >= wanted:
        return SkipReason(
            f"{depth.visible} messages waiting; ingest run {', '.join(active)} is still queued or running "
            f"({len(active)} of {wanted} wanted)"
        )
    tags = {**INGEST_TAGS, "fetch_etl/queue_depth": str(depth.visible)}
    return SensorResult(run_requests=[RunRequest(tags=tags) for _ in range(wanted - len(active))])
