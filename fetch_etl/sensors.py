"""`login_queue_sensor`: start an ingest run when the queue has messages.

It only reads the queue's approximate depth: it never receives or deletes, so a sensor tick can
never make a message invisible or lose one.
"""

import os

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from fetch_etl.jobs import INGEST_JOB_NAME, ingest_logins_job
from fetch_etl.resources.sqs import QueueError, SqsResource

DEFAULT_INTERVAL_SECONDS = 30
ASSET_JOB_NAME = "__ASSET_JOB"  # what the UI's "Materialize all" launches
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def sensor_interval() -> int:
    """LOGIN_QUEUE_SENSOR_INTERVAL (seconds between ticks), default 30."""
    return int(os.environ.get("LOGIN_QUEUE_SENSOR_INTERVAL", DEFAULT_INTERVAL_SECONDS))


def active_ingest_run_id(context: SensorEvaluationContext) -> str | None:
    """An ingest run (sensor, job or 'Materialize all') that is queued or in progress, if any."""
    if records := context.instance.get_run_records(
        RunsFilter(job_name=INGEST_JOB_NAME, statuses=ACTIVE_STATUSES), limit=1
    ):
        return records[0].dagster_run.run_id
    for record in context.instance.get_run_records(RunsFilter(job_name=ASSET_JOB_NAME, statuses=ACTIVE_STATUSES)):
        if AssetKey("user_logins") in (record.dagster_run.asset_selection or set()):
            return record.dagster_run.run_id
    return None


@sensor(
    job=ingest_logins_job,
    minimum_interval_seconds=sensor_interval(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests an ingest run when login-queue holds messages and no ingest run is active.",
)
def login_queue_sensor(context: SensorEvaluationContext, sqs: SqsResource) -> SensorResult | SkipReason:
    try:
        depth = sqs.depth()
    except QueueError as err:
        return SkipReason(f"queue not reachable, will retry next tick: {err}")
    if depth.visible == 0:
        return SkipReason(f"queue is empty: 0 visible, {depth.in_flight} in flight, {depth.delayed} delayed")
    active = active_ingest_run_id(context)
    if active is not None:
        return SkipReason(f"{depth.visible} messages waiting; ingest run {active} is still queued or running")
    return SensorResult(
        run_requests=[RunRequest(tags={"fetch_etl/queue_depth": str(depth.visible)})],
    )
