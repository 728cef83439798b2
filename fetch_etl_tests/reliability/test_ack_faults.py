"""The ack path under SQS's partial answers and refusals, through the assets against real Postgres and moto.

Faults are injected on the wire by `SqsFaultProxy` in front of moto, never by patching our own methods.
Each test is one case of docs/reliability.md's "Acknowledging" table; each failed on the code before the
rule "decide once, from what is stored" (commit 0af7a44).
"""

from __future__ import annotations

import threading
from typing import Any

from fetch_etl.local.stack import QueueUrls, create_queue_pair
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.ops.redrive import redrive
from fetch_etl.ops.status import gather
from fetch_etl.queue.messages import DEFAULT_MAX_RECEIVE_COUNT
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NOT_JSON,
    drain,
    fetch_all,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
    wait_until_none_in_flight,
)
from fetch_etl_tests.sqs_fault_proxy import SqsFaultProxy

REFUSED = '{"marker": "REFUSED-BY-THE-DLQ"}'  # a reject whose dead-letter copy the DLQ refuses


def _through(proxy: SqsFaultProxy, queues: QueueUrls) -> QueueUrls:
    return QueueUrls(proxy.queue_url(queues.queue_url), proxy.queue_url(queues.dlq_url))


def _rejects(database_url: str) -> dict[str, tuple[Any, ...]]:
    rows = fetch_all(
        database_url,
        "SELECT message_id, reason_code, dead_lettered_at IS NOT NULL, dead_letter_error FROM user_logins_rejected",
    )
    return {row[0]: row[1:] for row in rows}


def _dead_letter_ids(sqs_client: Any, dlq_url: str) -> list[str]:
    return sorted(m["MessageAttributes"]["original_message_id"]["StringValue"] for m in drain(sqs_client, dlq_url))


def test_loaded_logins_whose_deletes_failed_are_acknowledged_not_poisoned(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 1: every DeleteMessageBatch entry Failed; the logins come back past the receive limit."""
    ids = send(sqs_client, queue_urls.queue_url, generate_bodies(3, seed=11, malformed_rate=0))
    with SqsFaultProxy(sqs_endpoint) as proxy:
        proxy.fail_entries("DeleteMessageBatch")
        proxied = _through(proxy, queue_urls)
        sqs = sqs_resource(proxy.endpoint, proxied, visibility_timeout=1, max_receive_count=1)
        first = metadata(run_pipeline(resources(proxy.endpoint, proxied, database_url, sqs=sqs)))
    assert (first["loaded"], first["delete_failures"]) == (3, 3)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)  # back, now with ApproximateReceiveCount 2 > 1
    sqs = sqs_resource(sqs_endpoint, queue_urls, max_receive_count=1)
    second = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))

    assert (second["received"], second["already_stored"], second["rejected"]) == (3, 3, 0)
    assert second["deleted_from_queue"] == 3
    assert _rejects(database_url) == {}, "a loaded login must never also become a poison reject"
    assert sorted(r[0] for r in fetch_all(database_url, "SELECT message_id FROM user_logins")) == sorted(ids)
    assert drain(sqs_client, queue_urls.dlq_url) == []
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)


def test_a_dead_letter_queue_refusing_a_whole_batch_holds_back_only_what_it_refuses(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 2: the batch call fails as a whole; entry by entry, the DLQ refuses one body only."""
    logins = generate_bodies(5, seed=12, malformed_rate=0)
    ids = send(sqs_client, queue_urls.queue_url, [*logins, FOO_BAR, NOT_JSON, REFUSED])
    refused_id = ids[-1]
    with SqsFaultProxy(sqs_endpoint) as proxy:
        whole = proxy.fail_call("SendMessageBatch", queue=queue_urls.dlq_url, code="BatchRequestTooLong", times=1)
        one = proxy.fail_entries(
            "SendMessageBatch", queue=queue_urls.dlq_url, body_contains="REFUSED-BY", code="InvalidMessageContents"
        )
        proxied = _through(proxy, queue_urls)
        sqs = sqs_resource(proxy.endpoint, proxied, visibility_timeout=2)
        result = run_pipeline(resources(proxy.endpoint, proxied, database_url, sqs=sqs))
    assert result.success, "a refused dead letter must not fail the run"
    meta = metadata(result)
    assert (whole.hits, one.hits) == (1, 1)
    assert (meta["loaded"], meta["rejected"], meta["dead_lettered"], meta["dead_letter_failures"]) == (5, 3, 2, 1)
    assert meta["dead_letter_errors"] == {"InvalidMessageContents": 1}
    assert meta["deleted_from_queue"] == 7, "everything but the refused reject is acknowledged"
    rejects = _rejects(database_url)
    assert rejects[refused_id] == ("not_a_login", False, "InvalidMessageContents")
    assert _dead_letter_ids(sqs_client, queue_urls.dlq_url) == sorted(ids[5:7])

    env = {
        "SQS_QUEUE_URL": queue_urls.queue_url,
        "SQS_DLQ_URL": queue_urls.dlq_url,
        "AWS_ENDPOINT_URL": sqs_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "DATABASE_URL": database_url,
    }
    reasons = "\n".join(gather(env).attention)
    assert "1 rejects could not be forwarded to the dead-letter queue (InvalidMessageContents: 1)" in reasons
    assert "retention period drops the oldest in about" in reasons

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)  # the refused one stayed on the source queue
    again = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    assert (again["received"], again["already_stored"], again["dead_lettered"], again["deleted_from_queue"]) == (
        1,
        1,
        1,
        1,
    )
    assert _rejects(database_url)[refused_id] == ("not_a_login", True, None)
    assert _dead_letter_ids(sqs_client, queue_urls.dlq_url) == [refused_id], "(the other two are held by drain)"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)


def test_a_delete_call_failing_after_retries_succeeds_the_run_and_the_next_run_acknowledges(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 3: DeleteMessageBatch answers 500 after botocore's retries; the commit stands, the run succeeds."""
    ids = send(sqs_client, queue_urls.queue_url, [*generate_bodies(4, seed=13, malformed_rate=0), FOO_BAR])
    with SqsFaultProxy(sqs_endpoint) as proxy:
        failing = proxy.fail_call("DeleteMessageBatch", status=500, code="InternalError")
        proxied = _through(proxy, queue_urls)
        sqs = sqs_resource(proxy.endpoint, proxied, visibility_timeout=1, max_attempts=2)
        result = run_pipeline(resources(proxy.endpoint, proxied, database_url, sqs=sqs))
    assert result.success
    meta = metadata(result)
    assert failing.hits > 1, "botocore retried the call before giving up"
    assert (meta["loaded"], meta["dead_lettered"], meta["delete_failures"], meta["deleted_from_queue"]) == (4, 1, 5, 0)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    again = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    assert (again["already_stored"], again["loaded"], again["dead_lettered"], again["deleted_from_queue"]) == (
        5,
        0,
        0,
        5,
    )
    assert _dead_letter_ids(sqs_client, queue_urls.dlq_url) == [ids[4]], "one dead-letter copy"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)


def test_two_runs_holding_the_same_reject_forward_it_once(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 4: run A is paused inside its dead-letter call while run B receives the same messages."""
    ids = send(sqs_client, queue_urls.queue_url, [*generate_bodies(2, seed=14, malformed_rate=0), FOO_BAR])
    outcome: dict[str, Any] = {}
    with SqsFaultProxy(sqs_endpoint) as proxy:
        gate = proxy.hold_calls("SendMessageBatch", queue=queue_urls.dlq_url, times=1)
        proxied = _through(proxy, queue_urls)
        sqs_a = sqs_resource(proxy.endpoint, proxied, visibility_timeout=1, heartbeat=False)
        run_a = threading.Thread(
            target=lambda: outcome.update(a=run_pipeline(resources(proxy.endpoint, proxied, database_url, sqs=sqs_a)))
        )
        run_a.start()
        try:
            assert gate.arrived.wait(60), "run A never reached its dead-letter call"
            wait_until_none_in_flight(sqs_client, queue_urls.queue_url)  # A's visibility ran out: B gets them too
            b = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
        finally:
            gate.release.set()
            run_a.join(timeout=60)
    a = metadata(outcome["a"])
    assert (a["loaded"], a["dead_lettered"]) == (2, 1)
    assert (b["received"], b["already_stored"], b["dead_lettered"], b["dead_letter_held_elsewhere"]) == (3, 3, 0, 1)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))  # acknowledges whatever is left
    assert _dead_letter_ids(sqs_client, queue_urls.dlq_url) == [ids[2]], "exactly one dead-letter copy"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)


def test_the_local_queues_let_the_pipeline_record_a_failing_login_before_sqs_redrives_it(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 5: the fixtures' (and the local stack's) redrive limit is above SQS_MAX_RECEIVE_COUNT."""
    (message_id,) = send(sqs_client, queue_urls.queue_url, generate_bodies(1, seed=15, malformed_rate=0))
    for _ in range(DEFAULT_MAX_RECEIVE_COUNT):  # runs that kept failing after receiving it
        assert sqs_client.receive_message(QueueUrl=queue_urls.queue_url, VisibilityTimeout=0)["Messages"]

    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))

    assert meta["rejected_by_reason"] == {"poison": 1}, "the pipeline, not SQS, set it aside"
    assert _rejects(database_url) == {message_id: ("poison", True, None)}
    assert _dead_letter_ids(sqs_client, queue_urls.dlq_url) == [message_id]


def test_status_counts_dead_letters_without_a_rejects_row_and_a_redrive_limit_too_low(
    sqs_endpoint: str, sqs_client: Any, database_url: str
) -> None:
    queues = create_queue_pair(sqs_client, "status-audit", max_receive_count=5)
    try:
        send(sqs_client, queues.dlq_url, [FOO_BAR, NOT_JSON])  # as SQS's own redrive would leave them
        env = {
            "SQS_QUEUE_URL": queues.queue_url,
            "SQS_DLQ_URL": queues.dlq_url,
            "AWS_ENDPOINT_URL": sqs_endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "DATABASE_URL": database_url,
        }
        report = gather(env)
        reasons = "\n".join(report.attention)
        assert "2 of 2 dead letters looked at have no rejects row" in reasons
        assert "redrive policy moves a message to the dead-letter queue after 5 receives" in reasons
        assert queue_counts(sqs_client, queues.dlq_url) == (2, 0), "the audit lets go of what it looked at"
    finally:
        for url in queues:
            sqs_client.delete_queue(QueueUrl=url)


def test_a_poison_login_redriven_after_a_fix_lands_once_under_its_original_id(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Case 6: poison -> DLQ -> `fetch-etl redrive` -> loaded once; a redrive of a loaded login adds nothing."""
    (poisoned, loaded) = send(sqs_client, queue_urls.queue_url, generate_bodies(2, seed=16, malformed_rate=0))
    sqs = sqs_resource(sqs_endpoint, queue_urls, max_receive_count=3)
    for _ in range(3):  # runs that kept dying while holding the first login
        sqs_client.receive_message(QueueUrl=queue_urls.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=0)
    first = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))
    assert first["rejected_by_reason"] == {"poison": 1} and first["loaded"] == 1
    (created,) = fetch_all(database_url, "SELECT create_date FROM user_logins WHERE message_id = %s", (loaded,))

    moved = redrive(sqs)  # the fix: whatever killed those runs is gone
    assert (moved.ok, dict(moved.moved)) == (True, {"poison": 1})
    # A stray DLQ copy of the login already loaded, as a crash between forward and mark could leave.
    sqs_client.send_message(
        QueueUrl=queue_urls.dlq_url,
        MessageBody="{}",
        MessageAttributes={"original_message_id": {"DataType": "String", "StringValue": loaded}},
    )
    assert redrive(sqs).moved.total() == 1

    second = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))
    assert (second["received"], second["loaded"], second["already_stored"], second["rejected"]) == (2, 1, 1, 0)
    rows = fetch_all(database_url, "SELECT message_id, create_date FROM user_logins ORDER BY message_id")
    assert sorted(r[0] for r in rows) == sorted([poisoned, loaded]), "each once, under its original id"
    assert {r[1] for r in rows} == {created[0]}, "the redriven copy keeps the original's SentTimestamp"
    (row,) = fetch_all(
        database_url,
        "SELECT reason_code, redriven_at IS NOT NULL FROM user_logins_rejected WHERE message_id = %s",
        (poisoned,),
    )
    assert row == ("poison", True), "its rejects row is marked as redriven"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (0, 0)

    third = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))
    assert third["received"] == 0
