"""`fetch-etl status`: the queue, the dead-letter queue, the warehouse and the sensor at a glance.

Gathering talks to the services and never raises for an unreachable one: it records why instead, so
the table always prints. The verdicts and the table are pure functions of what was gathered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from tabulate import tabulate

from fetch_etl.defs.resources import postgres_from_env, sqs_from_env
from fetch_etl.queue import probes as queue_probes
from fetch_etl.queue.messages import QueueDepth, QueueError
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse import probes
from fetch_etl.warehouse.resource import PostgresResource, WarehouseError

SENSOR_NAME = "login_queue_sensor"
# dagster-daemon writes a heartbeat every 30 s; four missed ones mean no daemon is ticking sensors.
DAEMON_HEARTBEAT_TOLERANCE_S = 120
ON_STATUSES = frozenset({"RUNNING", "DECLARED_IN_CODE", "AUTOMATICALLY_RUNNING"})


@dataclass(frozen=True)
class QueueReport:
    url: str | None
    depth: QueueDepth | None = None
    error: str | None = None


@dataclass(frozen=True)
class WarehouseReport:
    target: str
    overview: probes.WarehouseOverview | None = None
    error: str | None = None


@dataclass(frozen=True)
class SensorReport:
    state: str  # running | stopped | not ticking | unknown
    detail: str

    @property
    def needs_attention(self) -> bool:
        return self.state in ("stopped", "not ticking")


@dataclass(frozen=True)
class StatusReport:
    queue: QueueReport
    dlq: QueueReport
    warehouse: WarehouseReport
    sensor: SensorReport
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    policy: queue_probes.QueuePolicy | None = None
    max_receive_count: int | None = None  # SQS_MAX_RECEIVE_COUNT
    dead_letters: DeadLetterAudit | None = None

    @property
    def attention(self) -> list[str]:
        return attention_reasons(self)


# --- verdicts (pure) ------------------------------------------------------------------------


def attention_reasons(report: StatusReport) -> list[str]:
    """Why an operator should look now; empty when all is well. These decide the exit code."""
    reasons: list[str] = []
    if report.queue.error:
        reasons.append(f"the queue is unreachable: {report.queue.error}")
    if report.dlq.error:
        reasons.append(f"the dead-letter queue is unreachable: {report.dlq.error}")
    elif report.dlq.depth is not None and (dead := _total(report.dlq.depth)):
        waits = "message waits" if dead == 1 else "messages wait"
        reasons.append(
            f"{dead} {waits} in the dead-letter queue: rejected messages (reason in their attributes) "
            "to inspect, fix upstream, and delete or redrive"
        )
    if report.warehouse.error:
        reasons.append(f"the database is unreachable: {report.warehouse.error}")
    undelivered = report.warehouse.overview.undelivered if report.warehouse.overview else None
    if undelivered and undelivered.count:
        codes = ", ".join(f"{code}: {n}" for code, n in undelivered.by_error.items())
        reasons.append(
            f"{undelivered.count} rejects could not be forwarded to the dead-letter queue ({codes}); they wait on "
            f"the source queue{_time_left(undelivered.oldest_sent_at, report)}. Fix the dead-letter queue "
            "(permissions, KMS key, MaximumMessageSize); the next run that receives them forwards them"
        )
    redrive = report.policy.redrive_max_receive_count if report.policy else None
    if redrive is not None and report.max_receive_count is not None and redrive <= report.max_receive_count:
        reasons.append(
            f"the queue's redrive policy moves a message to the dead-letter queue after {redrive} receives, not more "
            f"than SQS_MAX_RECEIVE_COUNT={report.max_receive_count}: a login whose runs keep failing would reach it "
            "unrecorded; raise maxReceiveCount above SQS_MAX_RECEIVE_COUNT"
        )
    if report.dead_letters and report.dead_letters.without_rejects_row:
        n = report.dead_letters.without_rejects_row
        reasons.append(
            f"{n} of {report.dead_letters.sampled} dead letters looked at have no rejects row: SQS's redrive policy "
            "moved them before the pipeline could record them (its maxReceiveCount must be above "
            "SQS_MAX_RECEIVE_COUNT); replay them with `fetch-etl redrive`"
        )
    if report.sensor.needs_attention:
        reasons.append(f"{SENSOR_NAME} is {report.sensor.state}: {report.sensor.detail}")
    return reasons


def _time_left(oldest: datetime | None, report: StatusReport) -> str:
    """', where SQS's retention drops the oldest in about N h' when both are known."""
    retention = report.policy.retention_s if report.policy else None
    if oldest is None or retention is None:
        return ""
    left = retention - (report.now - oldest).total_seconds()
    if left <= 0:
        return ", where SQS's retention period may already have dropped the oldest"
    hours = left / 3600
    return (
        f", where SQS's retention period drops the oldest in about {hours:.0f} h"
        if hours >= 1
        else (f", where SQS's retention period drops the oldest in about {left / 60:.0f} min")
    )


def sensor_verdict(
    stored_status: str | None,
    default_running: bool,
    heartbeat_age_s: float | None,
    last_tick: tuple[float, str] | None = None,
) -> SensorReport:
    """Whether the sensor is really running: switched on (stored state, else its default in code)
    AND a dagster-daemon heartbeat is fresh, since a sensor that is on but has no daemon never ticks."""
    tick = f"; last tick {ago(last_tick[0])}: {last_tick[1].lower()}" if last_tick else "; no tick yet"
    switched_on = stored_status in ON_STATUSES if stored_status is not None else default_running
    if not switched_on:
        return SensorReport("stopped", f"switched off (turn it on under Automation in the Dagster UI){tick}")
    if heartbeat_age_s is None:
        return SensorReport("not ticking", f"switched on, but no dagster-daemon has ever sent a heartbeat{tick}")
    if heartbeat_age_s > DAEMON_HEARTBEAT_TOLERANCE_S:
        return SensorReport(
            "not ticking", f"switched on, but the dagster-daemon's last heartbeat was {ago(heartbeat_age_s)}{tick}"
        )
    return SensorReport("running", f"daemon heartbeat {ago(heartbeat_age_s)}{tick}")


def ago(seconds: float) -> str:
    """'12 s ago', '3 min ago', '5 h ago', '2 d ago'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _total(depth: QueueDepth) -> int:
    return depth.visible + depth.in_flight + depth.delayed


# --- the table (pure) -----------------------------------------------------------------------


def _depth_rows(report: QueueReport) -> list[tuple[str, object]]:
    labels = ("queue: visible", "queue: in flight", "queue: delayed")
    if report.error:
        return [(label, "unreachable") for label in labels]
    depth = report.depth or QueueDepth(0, 0, 0)
    return list(zip(labels, (depth.visible, depth.in_flight, depth.delayed), strict=True))


def _dlq_value(report: QueueReport) -> object:
    if report.error:
        return "unreachable"
    if report.url is None:
        return "0 (not created yet)"
    return _total(report.depth or QueueDepth(0, 0, 0))


def _warehouse_rows(report: WarehouseReport, now: datetime) -> list[tuple[str, object]]:
    labels = ("rows in user_logins", "IP tokens seen more than once", "device tokens seen more than once")
    if report.error or report.overview is None:
        return [(label, "unreachable") for label in (*labels, "rejected (all time)", "newest loaded_at")]
    overview = report.overview
    if not overview.exists:
        rows: list[tuple[str, object]] = [(label, "no table yet") for label in labels]
    else:
        counts = (overview.rows, overview.duplicate_ip_tokens, overview.duplicate_device_tokens)
        rows = list(zip(labels, counts, strict=True))
    rejects = overview.rejects_by_reason or {}
    rows.append(("rejected (all time)", sum(rejects.values())))
    rows += [(f"rejected: {reason}", n) for reason, n in sorted(rejects.items())]
    newest = overview.newest_loaded_at
    when = f"{newest.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({ago((now - newest).total_seconds())})" if newest else "-"
    rows.append(("newest loaded_at", when))
    if overview.undelivered is not None:
        rows.append(("rejects the dead-letter queue refused", overview.undelivered.count))
    return rows


def render(report: StatusReport) -> str:
    """The table, what it looked at, and either 'nothing needs attention' or why to look."""
    rows: list[tuple[str, object]] = [
        *_depth_rows(report.queue),
        ("dead-letter queue", _dlq_value(report.dlq)),
        *(
            [
                (
                    "dead letters without a rejects row",
                    f"{report.dead_letters.without_rejects_row} of {report.dead_letters.sampled} looked at",
                )
            ]
            if report.dead_letters is not None
            else []
        ),
        *_warehouse_rows(report.warehouse, report.now),
        (SENSOR_NAME, f"{report.sensor.state} ({report.sensor.detail})"),
    ]
    lines = [
        tabulate(rows, headers=["fetch-etl status", "value"], tablefmt="github", disable_numparse=True),
        "",
        f"queue:    {report.queue.url}",
        f"dlq:      {report.dlq.url or '-'}",
        f"database: {report.warehouse.target}",
        "",
    ]
    reasons = report.attention
    if reasons:
        lines.append("needs attention:")
        lines += [f"- {reason}" for reason in reasons]
    else:
        lines.append("nothing needs attention")
    return "\n".join(lines)


# --- gathering ------------------------------------------------------------------------------


def resources_from_env(environ: Mapping[str, str]) -> tuple[SqsResource, PostgresResource]:
    """The pipeline's own settings (defs/resources.py), with short timeouts: a status call must be quick."""
    return sqs_from_env(environ, max_attempts=2), postgres_from_env(environ, connect_timeout=5)


def gather_queues(sqs: SqsResource) -> tuple[QueueReport, QueueReport]:
    try:
        queue = QueueReport(sqs.queue_url, sqs.depth())
    except QueueError as err:
        queue = QueueReport(sqs.queue_url, error=str(err))
    try:
        url, depth = queue_probes.dlq_depth(sqs)
        dlq = QueueReport(url, depth)
    except QueueError as err:
        dlq = QueueReport(sqs.dlq_url, error=str(err))
    return queue, dlq


def gather_warehouse(postgres: PostgresResource) -> WarehouseReport:
    try:
        with postgres.connect() as conn:
            return WarehouseReport(postgres.describe(), probes.warehouse_overview(conn))
    except WarehouseError as err:
        return WarehouseReport(postgres.describe(), error=str(err))


def dagster_home(environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """(DAGSTER_HOME when it holds an instance, else None with why)."""
    raw = environ.get("DAGSTER_HOME")
    if not raw:
        return None, "DAGSTER_HOME is not set, so no Dagster instance to ask"
    home = Path(raw)
    if not ((home / "dagster.yaml").is_file() or (home / "history").is_dir()):
        return None, f"no Dagster instance in DAGSTER_HOME={home}"
    return home, ""


def gather_sensor(environ: Mapping[str, str]) -> SensorReport:
    """Read the sensor's stored state, its newest tick and the daemon's heartbeat from the instance."""
    home, why = dagster_home(environ)
    if home is None:
        return SensorReport("unknown", why)
    # Dagster is imported only here: it is slow to import and not needed for the rest.
    from dagster import DagsterInstance, DefaultSensorStatus

    from fetch_etl.defs.automation import login_queue_sensor

    try:
        with DagsterInstance.from_config(str(home)) as instance:
            states = [
                s
                for s in instance.all_instigator_state()
                if s.instigator_name == SENSOR_NAME and s.instigator_type.value == "SENSOR"
            ]
            ticks = [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)]
            heartbeat = instance.get_daemon_heartbeats().get("SENSOR")
    except Exception as err:  # any storage problem: say so rather than guess
        return SensorReport("unknown", f"cannot read the Dagster instance in {home}: {str(err).splitlines()[0][:200]}")
    now = time.time()
    stored = max(states, key=lambda s: s.status.value in ON_STATUSES).status.value if states else None
    newest = max(ticks, key=lambda t: t.timestamp, default=None)
    return sensor_verdict(
        stored,
        login_queue_sensor.default_status == DefaultSensorStatus.RUNNING,
        now - heartbeat.timestamp if heartbeat else None,
        (now - newest.timestamp, newest.status.value) if newest else None,
    )


@dataclass(frozen=True)
class DeadLetterAudit:
    sampled: int
    without_rejects_row: int  # dead letters that no rejects row explains (SQS's own redrive moved them)


def audit_dead_letters(sqs: SqsResource, url: str, conn: psycopg.Connection, limit: int = 500) -> DeadLetterAudit:
    """Look at up to `limit` dead letters and count those without a rejects row.

    A pipeline-forwarded dead letter carries `original_message_id`; one SQS moved by its own redrive policy
    keeps its MessageId. Either way its key must be in `user_logins_rejected`, or the pipeline never saw the
    message fail (the redrive policy's maxReceiveCount is at or below SQS_MAX_RECEIVE_COUNT). The queue is
    asked first (queue/probes.py), then the warehouse (warehouse/probes.py).
    """
    seen = queue_probes.sample_dead_letters(sqs, url, limit)
    recorded = probes.recorded_rejects(conn, sorted({m.key for m in seen}))
    return DeadLetterAudit(len(seen), sum(1 for m in seen if m.key not in recorded))


def gather_ack_path(
    sqs: SqsResource, dlq: QueueReport, postgres: PostgresResource
) -> tuple[queue_probes.QueuePolicy | None, DeadLetterAudit | None]:
    """(the queue's policy, the dead-letter audit), None for what could not be read: the table still prints."""
    try:
        policy = queue_probes.queue_policy(sqs)
    except QueueError:
        policy = None
    if dlq.url is None or dlq.error or not _total(dlq.depth or QueueDepth(0, 0, 0)):
        return policy, None
    try:
        with postgres.connect() as conn:
            return policy, audit_dead_letters(sqs, dlq.url, conn)
    except (QueueError, WarehouseError):
        return policy, None


def gather(environ: Mapping[str, str]) -> StatusReport:
    sqs, postgres = resources_from_env(environ)
    queue, dlq = gather_queues(sqs)
    policy, dead_letters = gather_ack_path(sqs, dlq, postgres)
    return StatusReport(
        queue,
        dlq,
        gather_warehouse(postgres),
        gather_sensor(environ),
        policy=policy,
        max_receive_count=sqs.max_receive_count,
        dead_letters=dead_letters,
    )
