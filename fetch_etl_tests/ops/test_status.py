"""`fetch-etl status` against real Postgres, moto and a real Dagster instance, including every attention case."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus
from dagster._daemon.types import DaemonHeartbeat

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.ops.status import (
    DAEMON_HEARTBEAT_TOLERANCE_S,
    QueueReport,
    SensorReport,
    StatusReport,
    WarehouseReport,
    ago,
    gather,
    gather_sensor,
    render,
    sensor_verdict,
)
from fetch_etl.queue.messages import QueueDepth
from fetch_etl.warehouse.probes import WarehouseOverview
from fetch_etl_tests.helpers import FOO_BAR, closed_port, resources, run_pipeline, send

BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PIPELINE_ENV_PREFIXES = ("AWS_", "SQS_", "PII_MASKING_", "DAGSTER_", "LOGIN_QUEUE_")


def _environ(sqs_endpoint: str, queue_urls: QueueUrls, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": sqs_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "SQS_QUEUE_URL": queue_urls.queue_url,
        "SQS_DLQ_URL": queue_urls.dlq_url,
        "DATABASE_URL": database_url,
        **extra,
    }


@pytest.fixture
def dagster_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    yield home


def _sensor_state(home: Path, status: InstigatorStatus) -> None:
    """What the UI stores when someone switches the sensor on or off."""
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("fetch_etl"), "__repository__")
    origin = RemoteInstigatorOrigin(repository, "login_queue_sensor")
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_instigator_state(InstigatorState(origin, InstigatorType.SENSOR, status))


def _heartbeat(home: Path, age_s: float) -> None:
    """What a running dagster-daemon writes every 30 s."""
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age_s, "SENSOR", "test-daemon", None))


def _fetch_etl_status(env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_ENV_PREFIXES)}
    base.pop("DATABASE_URL", None)
    return subprocess.Popen(
        [str(BIN / "fetch-etl"), "status"],
        env={**base, **env},
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _row(output: str, label: str) -> str:
    """The value cell of the table row `label`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"no row {label!r} in\n{output}")


# --- the command, end to end ---------------------------------------------------------------------


def test_status_exits_0_when_all_is_well_and_1_with_the_reasons_when_not(
    dagster_home: Path,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(20, seed=51, malformed_rate=0))
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    send(sqs_client, queue_urls.queue_url, generate_bodies(3, seed=52, malformed_rate=0))  # waiting: not a problem
    _heartbeat(dagster_home, age_s=5)  # a daemon is alive and the sensor is on by default
    healthy = _environ(sqs_endpoint, queue_urls, database_url, DAGSTER_HOME=str(dagster_home))
    port = closed_port()
    broken = _environ(
        f"http://127.0.0.1:{port}",
        QueueUrls(f"http://127.0.0.1:{port}/000000000000/q", f"http://127.0.0.1:{port}/000000000000/q-dlq"),
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
    )
    # Both at once: each spends most of its time importing Dagster.
    procs = [_fetch_etl_status(healthy), _fetch_etl_status(broken)]
    (ok_code, ok, ok_err), (bad_code, bad, bad_err) = (_finish(p) for p in procs)

    assert ok_code == 0, ok + ok_err
    assert (_row(ok, "queue: visible"), _row(ok, "queue: in flight"), _row(ok, "queue: delayed")) == ("3", "0", "0")
    assert _row(ok, "dead-letter queue") == "0"
    assert _row(ok, "rows in user_logins") == "20"
    assert int(_row(ok, "IP tokens seen more than once")) > 0
    assert _row(ok, "rejected (all time)") == "0"
    assert _row(ok, "newest loaded_at").endswith("s ago)")
    assert _row(ok, "login_queue_sensor").startswith("running (daemon heartbeat")
    assert ok.rstrip().endswith("nothing needs attention")

    assert bad_code == 1, bad + bad_err
    assert "Traceback" not in bad_err
    assert _row(bad, "queue: visible") == _row(bad, "rows in user_logins") == "unreachable"
    assert _row(bad, "login_queue_sensor").startswith("unknown (DAGSTER_HOME is not set")
    reasons = bad.split("needs attention:\n", 1)[1]
    assert f"- the queue is unreachable: cannot read the queue depth on queue http://127.0.0.1:{port}/" in reasons
    assert "- the dead-letter queue is unreachable:" in reasons
    assert f"- the database is unreachable: cannot connect to database 'postgres' on 127.0.0.1:{port}" in reasons


def test_status_flags_a_non_empty_dead_letter_queue_and_counts_rejects_by_reason(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(5, seed=53, malformed_rate=0), FOO_BAR, FOO_BAR, "{"])
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))

    report = gather(_environ(sqs_endpoint, queue_urls, database_url))

    assert report.dlq.depth is not None and report.dlq.depth.visible == 3
    assert report.warehouse.overview is not None
    assert report.warehouse.overview.rejects_by_reason == {"not_a_login": 2, "invalid_json": 1}
    text = render(report)
    assert _row(text, "rejected (all time)") == "3"
    assert (_row(text, "rejected: invalid_json"), _row(text, "rejected: not_a_login")) == ("1", "2")
    assert report.attention == [
        "3 messages wait in the dead-letter queue: rejected messages (reason in their attributes) "
        "to inspect, fix upstream, and delete or redrive"
    ]


def test_status_on_a_database_never_loaded_and_a_dlq_never_created(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    environ = _environ(sqs_endpoint, queue_urls, database_url)
    del environ["SQS_DLQ_URL"]
    queue = sqs_client.create_queue(QueueName=f"solo-{time.time_ns()}")["QueueUrl"]  # no '-dlq' beside it
    environ["SQS_QUEUE_URL"] = queue
    try:
        report = gather(environ)
        dlqs = sqs_client.list_queues(QueueNamePrefix=queue.rsplit("/", 1)[1]).get("QueueUrls", [])
    finally:
        sqs_client.delete_queue(QueueUrl=queue)

    assert dlqs == [queue], "status must not create the dead-letter queue"
    text = render(report)
    assert _row(text, "dead-letter queue") == "0 (not created yet)"
    assert _row(text, "rows in user_logins") == "no table yet"
    assert report.attention == []


# --- the sensor, read from a real instance --------------------------------------------------------


def test_a_sensor_switched_off_needs_attention(dagster_home: Path) -> None:
    _heartbeat(dagster_home, age_s=1)
    _sensor_state(dagster_home, InstigatorStatus.STOPPED)

    sensor = gather_sensor({"DAGSTER_HOME": str(dagster_home)})

    assert sensor.state == "stopped" and sensor.needs_attention
    assert "switched off" in sensor.detail


def test_a_sensor_without_a_live_daemon_is_not_ticking(dagster_home: Path) -> None:
    assert gather_sensor({"DAGSTER_HOME": str(dagster_home)}).state == "not ticking"  # no daemon ever
    _sensor_state(dagster_home, InstigatorStatus.DECLARED_IN_CODE)
    _heartbeat(dagster_home, age_s=DAEMON_HEARTBEAT_TOLERANCE_S + 60)

    sensor = gather_sensor({"DAGSTER_HOME": str(dagster_home)})

    assert sensor.state == "not ticking" and sensor.needs_attention
    assert "last heartbeat was 3 min ago" in sensor.detail


def test_a_sensor_switched_on_with_a_live_daemon_is_running(dagster_home: Path) -> None:
    _sensor_state(dagster_home, InstigatorStatus.RUNNING)
    written = time.monotonic()
    _heartbeat(dagster_home, age_s=10)

    sensor = gather_sensor({"DAGSTER_HOME": str(dagster_home)})

    took = time.monotonic() - written  # the heartbeat ages while the instance is opened twice
    assert (sensor.state, sensor.needs_attention) == ("running", False)
    match = re.fullmatch(r"daemon heartbeat (\d+) s ago; no tick yet", sensor.detail)
    assert match and 10 <= int(match[1]) <= 10 + took, sensor.detail


def test_no_instance_means_unknown_not_attention(tmp_path: Path) -> None:
    assert gather_sensor({}).state == "unknown"
    empty = gather_sensor({"DAGSTER_HOME": str(tmp_path)})
    assert (empty.state, empty.needs_attention) == ("unknown", False)
    assert f"no Dagster instance in DAGSTER_HOME={tmp_path}" in empty.detail


# --- the pure parts -------------------------------------------------------------------------------


def test_sensor_verdicts() -> None:
    assert (
        sensor_verdict(None, True, 3.0, (40.0, "SKIPPED")).detail
        == "daemon heartbeat 3 s ago; last tick 40 s ago: skipped"
    )
    assert sensor_verdict(None, False, 3.0).state == "stopped", "off by default and never switched on"
    assert sensor_verdict("AUTOMATICALLY_RUNNING", False, 3.0).state == "running"
    assert sensor_verdict("STOPPED", True, 3.0).state == "stopped"
    assert sensor_verdict("RUNNING", True, float(DAEMON_HEARTBEAT_TOLERANCE_S)).state == "running"
    assert sensor_verdict("RUNNING", True, DAEMON_HEARTBEAT_TOLERANCE_S + 1.0).state == "not ticking"


def test_ago() -> None:
    assert [ago(s) for s in (-1, 0, 59.9, 60, 3599, 3600, 86400 * 3)] == [
        "0 s ago",
        "0 s ago",
        "59 s ago",
        "1 min ago",
        "59 min ago",
        "1 h ago",
        "3 d ago",
    ]


def test_render_states_what_it_looked_at_and_every_reason() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    report = StatusReport(
        queue=QueueReport("http://q", QueueDepth(7, 2, 1)),
        dlq=QueueReport("http://q-dlq", QueueDepth(0, 1, 0)),
        warehouse=WarehouseReport(
            "database 'w' on h:5432 as 'u'",
            WarehouseOverview(True, 10, 2, 1, {"invalid_json": 4}, now - timedelta(minutes=5)),
        ),
        sensor=SensorReport("stopped", "switched off"),
        now=now,
    )
    text = render(report)
    assert (_row(text, "queue: visible"), _row(text, "queue: in flight"), _row(text, "queue: delayed")) == (
        "7",
        "2",
        "1",
    )
    assert _row(text, "dead-letter queue") == "1", "in-flight DLQ messages count too"
    assert _row(text, "newest loaded_at") == "2026-01-02 02:59:05 UTC (5 min ago)"
    assert "queue:    http://q\ndlq:      http://q-dlq\ndatabase: database 'w' on h:5432 as 'u'" in text
    assert text.endswith(
        "needs attention:\n"
        "- 1 message waits in the dead-letter queue: rejected messages (reason in their attributes) to inspect, "
        "fix upstream, and delete or redrive\n"
        "- login_queue_sensor is stopped: switched off"
    )
