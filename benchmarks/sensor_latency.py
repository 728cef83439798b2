"""One latency sample's split, read from Dagster's storage: the sensor tick, the run's events and its metadata.

Shared by benchmarks/latency.py (dagster-daemon + code server on a local sqlite instance) and
deploy/standins/compose_probe.py's `latency` (the Compose deployment's dagster-postgres): both send one login,
clock it until its row is visible, then ask the instance where the time went.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType

from fetch_etl.defs.automation import INGEST_JOB_NAME

SENSOR_NAME = "login_queue_sensor"
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
# name -> what it measures; consecutive, so they add up to enqueue -> row visible (plus the run's tail)
COMPONENTS = {
    "wait_for_tick": "send -> sensor tick that saw it",
    "tick_to_queued": "tick start -> run enqueued (sensor evaluation, run created)",
    "dequeue": "run enqueued -> RUN_STARTING (QueuedRunCoordinator dequeue)",
    "launch": "RUN_STARTING -> run start (execute_run process started by the code server)",
    "start_to_first_receive": "run start -> first receive (raw_login_messages materialized - its elapsed)",
    "processing": "first receive -> row visible (receive + drain end, mask, load)",
    "visible_to_run_end": "row visible -> run finished (delete, metadata, checks, teardown)",
    "enqueue_to_visible": "send -> row visible in user_logins (total)",
}


def sensor_ticks(instance: DagsterInstance) -> list[Any]:
    """The login_queue_sensor's ticks, newest first ([] before its first tick)."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == SENSOR_NAME:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=50))
    return []


def finished_run(instance: DagsterInstance, sent: float) -> str | None:
    """The newest ingest run created after `sent`, once every such run has finished."""
    runs = instance.get_runs(RunsFilter(job_name=INGEST_JOB_NAME, created_after=datetime.fromtimestamp(sent, UTC)))
    return runs[0].run_id if runs and all(r.status in FINISHED for r in runs) else None


def breakdown(instance: DagsterInstance, run_id: str, sent: float, visible: float) -> dict[str, Any]:
    """Split send -> visible -> run end with the run's tick, events and raw_login_messages metadata."""
    record = instance.get_run_record_by_id(run_id)
    assert record is not None
    events: dict[str, float] = {}
    first_receive = step_start = None
    received = receive_seconds = stopped_by = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        events.setdefault(event.event_type_value, entry.timestamp)
        if event.event_type == DagsterEventType.STEP_START and entry.step_key == "raw_login_messages":
            step_start = entry.timestamp
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key.path == ["raw_login_messages"]:
            meta = materialization.metadata
            first_receive = entry.timestamp - float(meta["elapsed_seconds"].value)
            received = int(meta["received"].value)
            receive_seconds = float(meta["elapsed_seconds"].value)
            stopped_by = meta["receive_stopped_by"].value if "receive_stopped_by" in meta else None
    ticks = sensor_ticks(instance)
    tick_id = record.dagster_run.tags.get("dagster/tick")
    tick = next((t for t in ticks if str(t.tick_id) == tick_id or run_id in t.run_ids), None)
    tick_at = tick.timestamp if tick else float("nan")
    earlier = sorted((t for t in ticks if sent < t.timestamp < tick_at), key=lambda t: t.timestamp)
    missed = [f"+{t.timestamp - sent:.1f}s {t.status.value}: {t.skip_reason}" for t in earlier]
    queued = events.get(DagsterEventType.RUN_ENQUEUED.value, record.create_timestamp.timestamp())
    starting = events.get(DagsterEventType.RUN_STARTING.value, queued)
    started = record.start_time or events[DagsterEventType.RUN_START.value]
    assert first_receive is not None and received == 1, f"run {run_id} did not receive exactly this message"
    parts = {
        "wait_for_tick": tick_at - sent,
        "tick_to_queued": queued - tick_at,
        "dequeue": starting - queued,
        "launch": started - starting,
        "start_to_first_receive": first_receive - started,
        "processing": visible - first_receive,
        "visible_to_run_end": (record.end_time or visible) - visible,
        "enqueue_to_visible": visible - sent,
    }
    extra = {"run_id": run_id, "status": record.dagster_run.status.value, "ticks_after_send_without_run": missed}
    extra["step_start_to_first_receive"] = round(first_receive - step_start, 3) if step_start else None
    extra["receive_seconds"] = round(receive_seconds, 3) if receive_seconds is not None else None
    extra["receive_stopped_by"] = stopped_by  # how the drain ended (the queue counted empty, an empty poll...)
    before = [t.timestamp for t in ticks if t.timestamp <= sent]
    extra["phase_in_interval_s"] = round(sent - max(before), 2) if before else None
    return {**{k: round(v, 3) for k, v in parts.items()}, **extra}


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min / median / max of each component over the samples that have it (NaN: tick not found)."""
    return {
        name: {"min": round(min(vals), 3), "median": round(statistics.median(vals), 3), "max": round(max(vals), 3)}
        for name in COMPONENTS
        if (vals := [s[name] for s in samples if isinstance(s.get(name), float | int) and s[name] == s[name]])
    }


def table(summary: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [{"component": n, "what": COMPONENTS[n], **summary[n]} for n in COMPONENTS if n in summary]
