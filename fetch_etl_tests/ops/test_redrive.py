"""`fetch-etl redrive` and `redrive_dead_letters` against a real SQS server (moto), faults through a proxy."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from click.testing import CliRunner, Result

from fetch_etl.cli import main
from fetch_etl.definitions import defs
from fetch_etl.local.stack import LOCAL_REDRIVE_MAX_RECEIVE_COUNT, QueueUrls
from fetch_etl.ops.redrive import redrive
from fetch_etl_tests.helpers import aws_env as subprocess_env
from fetch_etl_tests.helpers import drain, login_body, queue_counts, send, sqs_resource
from fetch_etl_tests.sqs_fault_proxy import SqsFaultProxy

BIN = Path(sys.executable).parent
# Bodies hold clear PII, as real dead letters do: none of it may reach the output.
SECRET_IP = "203.0.113.77"


def _dead_letter(sqs_client: Any, dlq_url: str, letters: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Put (body, reason_code) dead letters on the DLQ as the pipeline forwards them; body -> original id."""
    originals: dict[str, str] = {}
    for start in range(0, len(letters), 10):
        entries = []
        for i, (body, reason_code) in enumerate(letters[start : start + 10]):
            originals[body] = f"orig-{start + i}"
            attributes = {"reason": "why, in words", "reason_code": reason_code, "original_message_id": originals[body]}
            entries.append(
                {
                    "Id": str(i),
                    "MessageBody": body,
                    "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
                }
            )
        assert not sqs_client.send_message_batch(QueueUrl=dlq_url, Entries=entries).get("Failed")
    return originals


def _mixed(count_by_reason: dict[str, int]) -> list[tuple[str, str]]:
    return [
        (login_body(ip=SECRET_IP, app_version=f"{reason}-{n}"), reason)
        for reason, count in count_by_reason.items()
        for n in range(count)
    ]


def _redrive_cli(queues: QueueUrls, *args: str, endpoint: str | None = None, protocol: str = "auto") -> Result:
    """`fetch-etl redrive` in-process, with the pipeline's environment (aws_env points AWS_* at moto)."""
    env = {"SQS_QUEUE_URL": queues.queue_url, "SQS_DLQ_URL": queues.dlq_url, "SQS_PROTOCOL": protocol}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return CliRunner().invoke(main, ["redrive", *args], env=env, catch_exceptions=False)


def _attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()}


def _table(output: str) -> dict[str, list[int]]:
    """reason_code -> [moved, left, failed] from the printed table."""
    rows: dict[str, list[int]] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows[cells[0]] = [int(c) for c in cells[1:]]
    return rows


@pytest.fixture
def proxy(sqs_endpoint: str) -> Iterator[SqsFaultProxy]:
    with SqsFaultProxy(sqs_endpoint) as running:
        yield running


def _proxied(proxy: SqsFaultProxy, queue_urls: QueueUrls) -> QueueUrls:
    return QueueUrls(proxy.queue_url(queue_urls.queue_url), proxy.queue_url(queue_urls.dlq_url))


# --- moving ----------------------------------------------------------------------------------


def test_redrive_moves_every_dead_letter_back_with_its_body_original_id_and_redriven_at(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls
) -> None:
    letters = _mixed({"invalid_app_version": 12, "invalid_json": 5, "poison": 3})
    originals = _dead_letter(sqs_client, queue_urls.dlq_url, letters)
    before = datetime.now(UTC)
    result = _redrive_cli(queue_urls)
    after = datetime.now(UTC)

    assert result.exit_code == 0, result.output
    assert _table(result.output) == {
        "invalid_app_version": [12, 0, 0],
        "invalid_json": [5, 0, 0],
        "poison": [3, 0, 0],
        "total": [20, 0, 0],
    }
    assert SECRET_IP not in result.output
    moved = drain(sqs_client, queue_urls.queue_url)
    assert sorted(m["Body"] for m in moved) == sorted(body for body, _ in letters), "bodies unchanged, each once"
    for message in moved:
        attributes = _attributes(message)
        assert set(attributes) == {"original_message_id", "original_sent_timestamp", "redriven_at"}, (
            "no old reason: evaluated afresh"
        )
        assert attributes["original_message_id"] == originals[message["Body"]]
        redriven_at = datetime.fromisoformat(attributes["redriven_at"])
        assert redriven_at.utcoffset() == timedelta(0) and before - timedelta(seconds=1) <= redriven_at <= after
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (0, 0), "each deleted from the DLQ once sent"


def test_a_message_sqs_itself_moved_keeps_its_own_message_id(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls
) -> None:
    (message_id,) = send(sqs_client, queue_urls.queue_url, [login_body(ip=SECRET_IP)])
    for _ in range(LOCAL_REDRIVE_MAX_RECEIVE_COUNT + 5):  # the queue's redrive policy moves it after that many
        sqs_client.receive_message(QueueUrl=queue_urls.queue_url, VisibilityTimeout=0)
        if queue_counts(sqs_client, queue_urls.dlq_url)[0]:
            break
    (dead,) = drain(sqs_client, queue_urls.dlq_url)
    assert dead["MessageId"] == message_id and not dead.get("MessageAttributes"), "as SQS moves it"
    sqs_client.change_message_visibility(
        QueueUrl=queue_urls.dlq_url, ReceiptHandle=dead["ReceiptHandle"], VisibilityTimeout=0
    )

    result = _redrive_cli(queue_urls)
    assert result.exit_code == 0, result.output
    assert _table(result.output)["unrecorded"] == [1, 0, 0]
    (moved,) = drain(sqs_client, queue_urls.queue_url)
    assert _attributes(moved)["original_message_id"] == message_id


def test_reason_filter_moves_only_those_and_leaves_the_rest_visible_at_once(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls
) -> None:
    letters = _mixed({"invalid_app_version": 13, "invalid_json": 4, "poison": 2})
    _dead_letter(sqs_client, queue_urls.dlq_url, letters)
    result = _redrive_cli(queue_urls, "--reason", "invalid_app_version", "--reason", "poison")

    assert result.exit_code == 0, result.output
    assert _table(result.output) == {
        "invalid_app_version": [13, 0, 0],
        "invalid_json": [0, 4, 0],
        "poison": [2, 0, 0],
        "total": [15, 4, 0],
    }
    assert len(drain(sqs_client, queue_urls.queue_url)) == 15
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (4, 0), "the others visible again, not held"
    assert {_attributes(m)["reason_code"] for m in drain(sqs_client, queue_urls.dlq_url)} == {"invalid_json"}


def test_limit_caps_how_many_move(aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"invalid_json": 25}))
    result = _redrive_cli(queue_urls, "--limit", "13")

    assert result.exit_code == 0, result.output
    assert _table(result.output)["total"] == [13, 0, 0]
    assert queue_counts(sqs_client, queue_urls.queue_url) == (13, 0)
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (12, 0)


def test_dry_run_moves_nothing_and_reports_what_would_move(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls
) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"invalid_app_version": 11, "poison": 2}))
    result = _redrive_cli(queue_urls, "--dry-run", "--reason", "invalid_app_version")

    assert result.exit_code == 0, result.output
    assert "would move" in result.output
    assert _table(result.output) == {"invalid_app_version": [11, 0, 0], "poison": [0, 2, 0], "total": [11, 2, 0]}
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (13, 0), "everything received is visible again"


def test_the_walk_ends_when_released_messages_come_straight_back(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    """With no hold at all (visibility 0) skipped letters reappear at once: a repeat ends the walk."""
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"poison": 7, "invalid_json": 3}))
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=0)
    outcome: list[Any] = []
    walker = threading.Thread(target=lambda: outcome.append(redrive(sqs, reasons=["invalid_json"])), daemon=True)
    walker.start()
    walker.join(timeout=60)

    assert outcome, "the redrive loop did not terminate"
    (result,) = outcome
    assert result.ok and result.moved == Counter(invalid_json=3)
    assert result.skipped == Counter(poison=7), "each counted once, however often it came back"


def test_the_command_as_installed(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"invalid_json": 2}))
    env = subprocess_env(sqs_endpoint, SQS_QUEUE_URL=queue_urls.queue_url, SQS_DLQ_URL=queue_urls.dlq_url)
    done = subprocess.run(
        [str(BIN / "fetch-etl"), "redrive"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert _table(done.stdout)["invalid_json"] == [2, 0, 0]
    assert SECRET_IP not in done.stdout + done.stderr


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_a_dead_letter_the_queue_refuses_stays_in_the_dlq_and_exits_1(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls, proxy: SqsFaultProxy, protocol: str
) -> None:
    letters = _mixed({"invalid_app_version": 8})
    letters.append((login_body(ip=SECRET_IP, app_version="REFUSE"), "invalid_app_version"))
    _dead_letter(sqs_client, queue_urls.dlq_url, letters)
    rule = proxy.fail_entries("SendMessageBatch", queue=queue_urls.queue_url, body_contains="REFUSE", code="KMS.Denied")
    result = _redrive_cli(_proxied(proxy, queue_urls), endpoint=proxy.endpoint, protocol=protocol)

    assert rule.hits == 1
    assert result.exit_code == 1, result.output
    assert _table(result.output)["invalid_app_version"] == [8, 0, 1]
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith("Error: 1 dead letters could not be sent back") and "KMS.Denied" in last_line
    assert SECRET_IP not in result.output
    assert len(drain(sqs_client, queue_urls.queue_url)) == 8
    (kept,) = drain(sqs_client, queue_urls.dlq_url)
    assert "REFUSE" in kept["Body"], "the refused one stays, visible again at once"


def test_a_send_refused_as_a_whole_moves_nothing_and_says_why(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls, proxy: SqsFaultProxy
) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"poison": 4}))
    proxy.fail_call("SendMessageBatch", queue=queue_urls.queue_url, status=403, code="AccessDenied")
    result = _redrive_cli(_proxied(proxy, queue_urls), endpoint=proxy.endpoint, protocol="json")

    assert result.exit_code == 1, result.output
    assert "Error: cannot send messages on queue" in result.output and "AccessDenied" in result.output
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (4, 0)
    assert proxy.calls.count(("SendMessageBatch", queue_urls.queue_url.rsplit("/", 1)[-1])) == 1, "stopped there"


def test_a_dead_letter_sent_but_not_deleted_is_reported(
    aws_env: dict[str, str], sqs_client: Any, queue_urls: QueueUrls, proxy: SqsFaultProxy
) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"poison": 3}))
    proxy.fail_entries("DeleteMessageBatch", queue=queue_urls.dlq_url)
    result = _redrive_cli(_proxied(proxy, queue_urls), endpoint=proxy.endpoint, protocol="json")

    assert result.exit_code == 1, result.output
    assert "3 messages were sent back but could not be deleted from the dead-letter queue" in result.output
    assert queue_counts(sqs_client, queue_urls.queue_url) == (3, 0)


# --- the Dagster job -------------------------------------------------------------------------


def _job_config(**config: Any) -> dict[str, Any]:
    return {"ops": {"redrive": {"config": config}}}


def test_the_dagster_job_moves_the_same_way(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls) -> None:
    originals = _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"invalid_app_version": 6, "invalid_json": 3}))
    job = defs().get_job_def("redrive_dead_letters")
    result = job.execute_in_process(
        run_config=_job_config(reason=["invalid_app_version"], limit=5),
        resources={"sqs": sqs_resource(sqs_endpoint, queue_urls)},
    )

    assert result.success
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: getattr(v, "value", v) for k, v in output.event_specific_data.metadata.items()}
    assert metadata["moved_by_reason"] == {"invalid_app_version": 5} and metadata["dry_run"] is False
    moved = drain(sqs_client, queue_urls.queue_url)
    assert {_attributes(m)["original_message_id"] for m in moved} == {originals[m["Body"]] for m in moved}
    assert len(moved) == 5 and queue_counts(sqs_client, queue_urls.dlq_url) == (4, 0)


def test_the_dagster_job_fails_with_the_sentence(sqs_client: Any, queue_urls: QueueUrls, proxy: SqsFaultProxy) -> None:
    _dead_letter(sqs_client, queue_urls.dlq_url, _mixed({"poison": 2}))
    proxy.fail_entries("SendMessageBatch", queue=queue_urls.queue_url)
    sqs = sqs_resource(proxy.endpoint, _proxied(proxy, queue_urls), protocol="query")
    result = (
        defs()
        .get_job_def("redrive_dead_letters")
        .execute_in_process(run_config=_job_config(), resources={"sqs": sqs}, raise_on_error=False)
    )

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert failure.user_failure_data is not None, "a Failure with our sentence, not a crash"
    description = str(failure.user_failure_data.description)
    assert "2 dead letters could not be sent back" in description
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (2, 0)


def test_a_redrive_when_no_dead_letter_queue_exists_creates_none(sqs_endpoint: str, sqs_client: Any) -> None:
    name = f"lonely-{uuid4().hex[:8]}"
    url = sqs_client.create_queue(QueueName=name)["QueueUrl"]
    try:
        sqs = sqs_resource(sqs_endpoint, QueueUrls(url, ""), dlq_url=None)
        for dry_run in (True, False):
            result = redrive(sqs, dry_run=dry_run)
            assert (result.ok, result.moved.total()) == (True, 0)
        assert sqs_client.list_queues(QueueNamePrefix=name).get("QueueUrls") == [url], "no DLQ was created"
    finally:
        sqs_client.delete_queue(QueueUrl=url)
