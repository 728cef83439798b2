"""The rest of the reliability promise: slow runs, poison messages, wrong keys, throttling, SQS outages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from fetch_etl.defs import assets
from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.masking import SivMasker
from fetch_etl.ops import pii_admin
from fetch_etl_tests.helpers import (
    closed_port,
    fetch_all,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    sqs_resource,
)
from fetch_etl_tests.legacy_sqs import LegacySqsDouble
from fetch_etl_tests.reliability.test_faults import assert_exactly_once, seed_batch
from fetch_etl_tests.sqs_fault_proxy import SqsFaultProxy

KEY_A, KEY_B = "0a" * 32, "0b" * 32


def _step_error(result: Any) -> str:
    failure = next(event for event in result.all_events if event.is_step_failure)
    return f"{failure.step_key}: {failure.step_failure_data.error}"


def test_a_run_slower_than_the_visibility_timeout_keeps_its_messages_invisible(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=20)
    observed: list[tuple[int, int]] = []
    original_load: Callable[..., Any] = assets.load_run

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 7  # three and a half visibility timeouts of 2 s
        while time.monotonic() < deadline:
            observed.append(queue_counts(sqs_client, queue_urls.queue_url))
            time.sleep(0.5)
        return original_load(*args, **kwargs)

    monkeypatch.setattr(assets, "load_run", slow_load)
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=2)
    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))

    assert observed and all(visible == 0 for visible, _ in observed), f"messages reappeared mid-run: {observed}"
    assert meta["visibility_extensions"] >= 22 * 3
    assert (meta["loaded"], meta["delete_failures"]) == (20, 0)
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


def test_a_poison_message_is_dead_lettered_once_it_passes_the_receive_limit(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=5)
    for _ in range(3):  # three earlier runs died on these messages: each receive counts
        received = 0
        while received < 7:
            got = sqs_client.receive_message(QueueUrl=queue_urls.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
            received += len(got.get("Messages", []))
    sqs = sqs_resource(sqs_endpoint, queue_urls, max_receive_count=3)
    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)))

    assert meta["rejected_by_reason"] == {"poison": 7}
    codes = dict(fetch_all(database_url, "SELECT message_id, reason_code FROM user_logins_rejected"))
    assert codes == dict.fromkeys(valid | rejected, "poison")
    reason = fetch_all(database_url, "SELECT reason FROM user_logins_rejected LIMIT 1")[0][0]
    assert "received 4 times" in reason and "limit 3" in reason
    assert_exactly_once(sqs_client, queue_urls, database_url, set(), valid | rejected)


def test_a_wrong_masking_key_loads_nothing_and_says_what_to_fix(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    seed_batch(sqs_client, queue_urls.queue_url, valid=5)
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url, key=KEY_A))
    seed_batch(sqs_client, queue_urls.queue_url, valid=5, seed=12)

    for key, mode in ((KEY_B, "hmac"), (KEY_A, "siv")):
        failed = run_pipeline(
            resources(sqs_endpoint, queue_urls, database_url, key=key, mode=mode), raise_on_error=False
        )
        assert not failed.success
        error = _step_error(failed)
        assert error.startswith("raw_login_messages:"), "refused before anything is received"
        assert "not the one the stored tokens were made with" in error and "PII_MASKING_KEY" in error
        assert queue_counts(sqs_client, queue_urls.queue_url) == (7, 0), "nothing was received"
    assert fetch_all(database_url, "SELECT count(DISTINCT mask_key_id) FROM user_logins")[0][0] == 1


def test_after_a_rotation_only_the_new_key_loads(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    seed_batch(sqs_client, queue_urls.queue_url, valid=5)
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url, key=KEY_A, mode="siv"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        result = pii_admin.rotate_key(conn, SivMasker(bytes.fromhex(KEY_A)), SivMasker(bytes.fromhex(KEY_B)))
    assert result.complete

    seed_batch(sqs_client, queue_urls.queue_url, valid=5, seed=12)
    old = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, key=KEY_A, mode="siv"), raise_on_error=False)
    assert not old.success and "not the one the stored tokens were made with" in _step_error(old)
    new = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, key=KEY_B, mode="siv")))
    assert new["loaded"] == 5
    assert fetch_all(database_url, "SELECT count(*), count(DISTINCT mask_key_id) FROM user_logins")[0] == (10, 1)


def test_throttling_and_5xx_answers_are_retried(
    legacy_sqs: LegacySqsDouble, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=10)
    throttled = (
        b"<ErrorResponse><Error><Type>Sender</Type><Code>ThrottlingException</Code><Message>Rate exceeded"
        b"</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    )
    legacy_sqs.fail_next(2, status=503)
    legacy_sqs.fail_next(1, status=400, body=throttled, content_type="text/xml")
    legacy_sqs.fail_next(1, status=500)
    queues = QueueUrls(legacy_sqs.queue_url(queue_urls.queue_url), legacy_sqs.queue_url(queue_urls.dlq_url))
    sqs = sqs_resource(legacy_sqs.endpoint, queues, protocol="query", max_attempts=5)
    meta = metadata(run_pipeline(resources(legacy_sqs.endpoint, queues, database_url, sqs=sqs)))
    assert meta["loaded"] == 10
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


def test_throttling_and_5xx_answers_are_retried_on_the_json_protocol(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    valid, rejected = seed_batch(sqs_client, queue_urls.queue_url, valid=10)
    with SqsFaultProxy(sqs_endpoint) as proxy:
        faults = [
            proxy.fail_call(None, status=503, code=None, times=2),  # a bare 503, as a load balancer sends it
            proxy.fail_call(None, status=400, code="ThrottlingException", message="Rate exceeded", times=1),
            proxy.fail_call(None, status=500, code="InternalError", times=1),
        ]
        queues = QueueUrls(proxy.queue_url(queue_urls.queue_url), proxy.queue_url(queue_urls.dlq_url))
        # One receiver: the four faults meet one call in a row, which only its fifth attempt gets through.
        sqs = sqs_resource(proxy.endpoint, queues, protocol="json", max_attempts=5, receive_threads=1)
        meta = metadata(run_pipeline(resources(proxy.endpoint, queues, database_url, sqs=sqs)))
    assert [fault.hits for fault in faults] == [2, 1, 1], "every fault was answered, and retried past"
    assert sqs.wire_protocol() == "json"
    assert meta["loaded"] == 10
    assert_exactly_once(sqs_client, queue_urls, database_url, valid, rejected)


def test_a_run_with_sqs_unreachable_fails_with_one_clear_sentence(
    queue_urls: QueueUrls, database_url: str, sqs_endpoint: str
) -> None:
    port = closed_port()
    queues = QueueUrls(f"http://127.0.0.1:{port}/000000000000/login-queue", f"http://127.0.0.1:{port}/x/dlq")
    sqs = sqs_resource(f"http://127.0.0.1:{port}", queues, max_attempts=1)
    failed = run_pipeline(resources(sqs_endpoint, queues, database_url, sqs=sqs), raise_on_error=False)
    assert not failed.success
    error = _step_error(failed)
    assert f"cannot receive messages on queue http://127.0.0.1:{port}/000000000000/login-queue" in error
    assert "Traceback" not in error.split("\n")[0]
