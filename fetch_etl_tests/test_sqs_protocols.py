"""The whole pipeline over each SQS wire protocol, and `auto` against a double of the reference LocalStack.

The batch has the reference traffic's shape: synthetic logins plus the non-login message it is known for.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fetch_etl.local_stack import QueueUrls
from fetch_etl.resources.sqs import QueueError
from fetch_etl.synthetic import generate_bodies
from fetch_etl_tests.helpers import (
    FOO_BAR,
    drain,
    fetch_all,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
)
from fetch_etl_tests.legacy_sqs import LegacySqsDouble

FALLBACK_LINE = "speaks only the older query protocol"


def reference_sample() -> list[str]:
    """100 bodies like the reference queue's: 99 logins of the real shape and one non-login message."""
    return [*generate_bodies(99, seed=2022, malformed_rate=0), FOO_BAR]


def assert_loaded_once(sqs_client: Any, queues: QueueUrls, database_url: str, ids: list[str], meta: dict) -> None:
    assert (meta["received"], meta["loaded"], meta["rejected"], meta["already_present"]) == (100, 99, 1, 0)
    assert meta["rejected_by_reason"] == {"not_a_login": 1}
    assert (meta["dead_lettered"], meta["deleted_from_queue"], meta["delete_failures"]) == (1, 100, 0)
    loaded = {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")}
    assert loaded == set(ids[:99])
    assert queue_counts(sqs_client, queues.queue_url) == (0, 0)
    (dead,) = drain(sqs_client, queues.dlq_url)
    assert dead["Body"] == FOO_BAR
    attributes = {name: value["StringValue"] for name, value in dead["MessageAttributes"].items()}
    assert attributes["original_message_id"] == ids[99] and attributes["reason_code"] == "not_a_login"


@pytest.mark.parametrize("protocol", ["query", "json", "auto"])
def test_pipeline_loads_the_reference_sample_over_moto(
    protocol: str, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    ids = send(sqs_client, queue_urls.queue_url, reference_sample())
    sqs = sqs_resource(sqs_endpoint, queue_urls, protocol=protocol)

    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))

    assert_loaded_once(sqs_client, queue_urls, database_url, ids, meta)
    assert sqs.wire_protocol() == ("json" if protocol == "auto" else protocol)


def test_auto_falls_back_to_query_through_the_json_rejecting_double(
    legacy_sqs: LegacySqsDouble,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = send(sqs_client, queue_urls.queue_url, reference_sample())
    via_double = QueueUrls(legacy_sqs.queue_url(queue_urls.queue_url), legacy_sqs.queue_url(queue_urls.dlq_url))
    sqs = sqs_resource(legacy_sqs.endpoint, via_double, protocol="auto")
    res = resources(legacy_sqs.endpoint, via_double, database_url, sqs=sqs)

    with caplog.at_level(logging.INFO):
        meta = metadata(run_pipeline(res))

    assert_loaded_once(sqs_client, queue_urls, database_url, ids, meta)
    fallback = [record for record in caplog.records if FALLBACK_LINE in record.getMessage()]
    assert len(fallback) == 1, "one line says the endpoint needs the query protocol"
    assert legacy_sqs.endpoint in fallback[0].getMessage() and "HTTP 500" in fallback[0].getMessage()
    assert sqs.wire_protocol() == "query"
    rejected_once = legacy_sqs.json_rejected
    assert rejected_once >= 1 and legacy_sqs.query_proxied > 10

    sqs.depth()  # later calls, even from a new resource in this process, go straight to query
    sqs_resource(legacy_sqs.endpoint, via_double, protocol="auto").depth()
    assert legacy_sqs.json_rejected == rejected_once


def test_json_against_the_double_fails_with_one_clear_sentence(
    legacy_sqs: LegacySqsDouble, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, reference_sample())
    via_double = QueueUrls(legacy_sqs.queue_url(queue_urls.queue_url), legacy_sqs.queue_url(queue_urls.dlq_url))
    sqs = sqs_resource(legacy_sqs.endpoint, via_double, protocol="json", max_attempts=1)

    with pytest.raises(QueueError) as raised:
        sqs.depth()
    message = str(raised.value)
    assert message.startswith(f"cannot read the queue depth on queue {via_double.queue_url} at endpoint ")
    assert "HTTP 500 to a JSON-protocol request" in message and "set SQS_PROTOCOL=auto or query" in message
    assert "\n" not in message and "<" not in message

    result = run_pipeline(resources(legacy_sqs.endpoint, via_double, database_url, sqs=sqs), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_login_messages"
    assert "cannot receive messages on queue" in str(failure.step_failure_data.error)
    assert "set SQS_PROTOCOL=auto or query" in str(failure.step_failure_data.error)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (100, 0), "nothing was received"
    assert legacy_sqs.query_proxied == 0
