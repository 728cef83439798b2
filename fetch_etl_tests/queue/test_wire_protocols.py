"""The whole pipeline over each SQS wire protocol: on moto (JSON and query), and on LocalStack 1.0.4, the
reference image's, which speaks only query and answers JSON with HTTP 500 (so `auto` falls back).

The batch has the reference traffic's shape: synthetic logins plus the non-login message it is known for.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.messages import QueueError
from fetch_etl_tests.helpers import (
    FOO_BAR,
    TEST_KEY_HEX,
    drain,
    fetch_all,
    metadata,
    pipeline_env,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
)
from fetch_etl_tests.legacy_sqs import LegacySqsDouble
from fetch_etl_tests.localstack_legacy import LegacyLocalStack, query_client

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


def test_pipeline_loads_the_reference_sample_over_localstack_1_0_4_in_query_mode(
    localstack_legacy: LegacyLocalStack, legacy_queue_urls: QueueUrls, database_url: str
) -> None:
    admin = query_client(localstack_legacy.endpoint)
    ids = send(admin, legacy_queue_urls.queue_url, reference_sample())
    sqs = sqs_resource(localstack_legacy.endpoint, legacy_queue_urls, protocol="query")

    meta = metadata(run_pipeline(resources(localstack_legacy.endpoint, legacy_queue_urls, database_url, sqs=sqs)))

    assert_loaded_once(admin, legacy_queue_urls, database_url, ids, meta)
    assert sqs.wire_protocol() == "query"


def test_auto_falls_back_to_query_on_localstack_1_0_4_with_one_line(
    localstack_legacy: LegacyLocalStack,
    legacy_queue_urls: QueueUrls,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through a counting proxy (a fresh endpoint, so this process has not learned it yet); LocalStack refuses JSON."""
    admin = query_client(localstack_legacy.endpoint)
    ids = send(admin, legacy_queue_urls.queue_url, reference_sample())
    with LegacySqsDouble(localstack_legacy.endpoint, reject_json=False) as proxy:
        via_proxy = QueueUrls(proxy.queue_url(legacy_queue_urls.queue_url), proxy.queue_url(legacy_queue_urls.dlq_url))
        sqs = sqs_resource(proxy.endpoint, via_proxy, protocol="auto")

        with caplog.at_level(logging.INFO):
            meta = metadata(run_pipeline(resources(proxy.endpoint, via_proxy, database_url, sqs=sqs)))

        assert_loaded_once(admin, legacy_queue_urls, database_url, ids, meta)
        fallback = [record for record in caplog.records if FALLBACK_LINE in record.getMessage()]
        assert len(fallback) == 1, "one line says the endpoint needs the query protocol"
        assert fallback[0].levelno == logging.WARNING
        assert proxy.endpoint in fallback[0].getMessage() and "HTTP 500" in fallback[0].getMessage()
        assert sqs.wire_protocol() == "query"
        json_once = proxy.json_requests
        # No JSON call is retried before the protocol is decided: 2 (the calls that went out before the first
        # answer came back), where botocore's 3 attempts each made it 6 and cost every run process ~1.1 s.
        assert 1 <= json_once <= 2
        assert proxy.query_proxied > 10

        sqs.depth()  # later calls, even from a new resource in this process, go straight to query
        sqs_resource(proxy.endpoint, via_proxy, protocol="auto").depth()
        assert proxy.json_requests == json_once


def test_json_against_localstack_1_0_4_fails_with_one_clear_sentence(
    localstack_legacy: LegacyLocalStack, legacy_queue_urls: QueueUrls, database_url: str
) -> None:
    admin = query_client(localstack_legacy.endpoint)
    send(admin, legacy_queue_urls.queue_url, reference_sample())
    sqs = sqs_resource(localstack_legacy.endpoint, legacy_queue_urls, protocol="json", max_attempts=1)

    with pytest.raises(QueueError) as raised:
        sqs.depth()
    message = str(raised.value)
    assert message.startswith(f"cannot read the queue depth on queue {legacy_queue_urls.queue_url} at endpoint ")
    assert "HTTP 500 to a JSON-protocol request" in message and "set SQS_PROTOCOL=auto or query" in message
    assert "\n" not in message and "<" not in message

    res = resources(localstack_legacy.endpoint, legacy_queue_urls, database_url, sqs=sqs)
    result = run_pipeline(res, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_login_messages"
    assert "cannot receive messages on queue" in str(failure.step_failure_data.error)
    assert "set SQS_PROTOCOL=auto or query" in str(failure.step_failure_data.error)
    assert queue_counts(admin, legacy_queue_urls.queue_url) == (100, 0), "nothing was received"


def test_dagster_asset_materialize_with_auto_on_localstack_1_0_4_loads_once(
    tmp_path: Path, localstack_legacy: LegacyLocalStack, legacy_queue_urls: QueueUrls, database_url: str
) -> None:
    """The reference sample as a user runs it: `dagster asset materialize`, SQS_PROTOCOL=auto, twice."""
    admin = query_client(localstack_legacy.endpoint)
    ids = send(admin, legacy_queue_urls.queue_url, reference_sample())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = pipeline_env(
        localstack_legacy.endpoint,
        legacy_queue_urls,
        database_url,
        DAGSTER_HOME=str(home),
        PII_MASKING_KEY=TEST_KEY_HEX,
        SQS_PROTOCOL="auto",
    )
    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions"]

    def materialize() -> subprocess.CompletedProcess[str]:
        run = subprocess.run([*dagster, "--select", "*"], env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    first = materialize()

    assert (first.stdout + first.stderr).count(FALLBACK_LINE) == 1, "one WARNING line per process"
    assert {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")} == set(ids[:99])
    assert fetch_all(database_url, "SELECT reason_code FROM user_logins_rejected") == [("not_a_login",)]
    assert queue_counts(admin, legacy_queue_urls.queue_url) == (0, 0)
    (dead,) = drain(admin, legacy_queue_urls.dlq_url)
    assert dead["Body"] == FOO_BAR and dead["MessageAttributes"]["original_message_id"]["StringValue"] == ids[99]

    materialize()

    assert fetch_all(database_url, "SELECT count(*) FROM user_logins") == [(99,)]
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins_rejected") == [(1,)]
    assert sum(queue_counts(admin, legacy_queue_urls.dlq_url)) == 1, "the rerun dead-lettered nothing more"
