"""End to end through Dagster against real Postgres and moto's SQS server."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse.load import USER_LOGINS_DDL
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NOT_JSON,
    TEST_KEY_HEX,
    NoDeleteSqs,
    drain,
    execute,
    fetch_all,
    login_body,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
    wait_until_none_in_flight,
)


def test_loads_valid_rejects_and_dead_letters_the_rest(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    bodies = [*generate_bodies(60, seed=7, malformed_rate=0), FOO_BAR, NOT_JSON]
    ids = send(sqs_client, queue_urls.queue_url, bodies)

    result = run_pipeline(resources(sqs_endpoint, queue_urls, database_url))

    meta = metadata(result)
    assert (meta["received"], meta["loaded"], meta["rejected"], meta["already_present"]) == (62, 60, 2, 0)
    assert meta["rejected_by_reason"] == {"not_a_login": 1, "invalid_json": 1}
    assert meta["dagster/row_count"] == 60
    loaded = {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")}
    assert loaded == set(ids[:60])
    rejects = dict(fetch_all(database_url, "SELECT message_id, reason_code FROM user_logins_rejected"))
    assert rejects == {ids[60]: "not_a_login", ids[61]: "invalid_json"}
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)

    dead = {
        m["MessageAttributes"]["original_message_id"]["StringValue"]: m for m in drain(sqs_client, queue_urls.dlq_url)
    }
    assert set(dead) == {ids[60], ids[61]}
    assert dead[ids[60]]["Body"] == FOO_BAR and dead[ids[61]]["Body"] == NOT_JSON
    assert dead[ids[60]]["MessageAttributes"]["reason_code"]["StringValue"] == "not_a_login"


def test_values_are_encoded_masked_and_dated(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(
        sqs_client,
        queue_urls.queue_url,
        [login_body(app_version="0.96", locale=None, ip=" ::ffff:199.172.111.135 "), login_body(app_version="3.7")],
    )
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))

    rows = fetch_all(
        database_url,
        "SELECT app_version, app_version_raw, locale, masked_ip, masked_device_id, create_date, loaded_at "
        "FROM user_logins ORDER BY app_version",
    )
    key = bytes.fromhex(TEST_KEY_HEX)
    expected_ip = hmac.new(key, b"199.172.111.135", hashlib.sha256).hexdigest()
    expected_device = hmac.new(key, b"593-47-5928", hashlib.sha256).hexdigest()
    assert [(r[0], r[1], r[2]) for r in rows] == [(96000, "0.96", None), (3007000, "3.7", "RU")]
    assert {r[3] for r in rows} == {expected_ip}, "canonicalised IPv4-mapped IPv6 gives the IPv4 token"
    assert {r[4] for r in rows} == {expected_device}
    assert all(r[5] is not None and r[6] is not None for r in rows)


def test_rerun_adds_nothing(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(30, seed=1))
    res = resources(sqs_endpoint, queue_urls, database_url)
    first = metadata(run_pipeline(res))
    second = metadata(run_pipeline(res))
    assert first["loaded"] + first["rejected"] == 30
    assert (second["received"], second["loaded"]) == (0, 0)
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == first["loaded"]


def test_redelivered_messages_are_not_duplicated(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    ids = send(sqs_client, queue_urls.queue_url, [*generate_bodies(20, seed=3, malformed_rate=0), FOO_BAR])
    crashing = NoDeleteSqs(**sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1).model_dump())
    first = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=crashing)))
    assert (first["loaded"], first["delete_failures"]) == (20, 21)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)  # SQS redelivers the same MessageIds
    second = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
    # Decided from what is stored, not evaluated again: 20 logins and 1 forwarded reject, all acknowledged.
    assert (second["received"], second["already_stored"], second["loaded"], second["deleted_from_queue"]) == (
        21,
        21,
        0,
        21,
    )
    assert second["dead_lettered"] == 0, "the reject reached the DLQ in the first run; not forwarded twice"
    assert fetch_all(database_url, "SELECT count(*), count(DISTINCT message_id) FROM user_logins")[0] == (20, 20)
    assert {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")} == set(ids[:20])
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert len(drain(sqs_client, queue_urls.dlq_url)) == 1


def test_loads_into_the_reference_table_as_it_is(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    execute(database_url, USER_LOGINS_DDL)
    execute(database_url, "INSERT INTO user_logins VALUES ('legacy', 'ios', 'x', 'y', 'US', 230, '2020-01-01')")
    send(sqs_client, queue_urls.queue_url, generate_bodies(10, seed=5, malformed_rate=0))
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url))  # the migration is idempotent

    columns = dict(
        fetch_all(
            database_url,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'user_logins'",
        )
    )
    assert columns["app_version"] == "integer" and columns["masked_ip"] == "character varying"
    assert {"message_id", "app_version_raw", "loaded_at"} <= set(columns)
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins WHERE user_id = 'legacy'")[0][0] == 1
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == 11


def test_every_materialization_reports_its_metadata(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(12, seed=9, malformed_rate=0), FOO_BAR])
    result = run_pipeline(resources(sqs_endpoint, queue_urls, database_url))
    common = {"elapsed_seconds", "messages_per_second", "dagster/row_count"}
    assert common | {"received"} <= set(metadata(result, "raw_login_messages"))
    masked = metadata(result, "masked_logins")
    assert common | {"loadable", "rejected", "rejected_by_reason", "preview"} <= set(masked)
    assert "| user_id" in masked["preview"] and "…" in masked["preview"]
    loaded = metadata(result, "user_logins")
    assert common | {"received", "loaded", "already_present", "rejected", "rejected_by_reason"} <= set(loaded)


def test_missing_key_stops_the_run_before_anything_is_received(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(5, seed=2))
    res = resources(sqs_endpoint, queue_urls, database_url, key="")
    result = run_pipeline(res, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "PII_MASKING_KEY" in str(failure.step_failure_data.error)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (5, 0)


@pytest.mark.parametrize("step", ["user_logins", "masked_logins"])
def test_a_step_alone_explains_that_the_batch_lives_in_memory(
    step: str, sqs_endpoint: str, queue_urls: QueueUrls, database_url: str
) -> None:
    from dagster import materialize

    from fetch_etl_tests.helpers import ASSETS

    result = materialize(
        ASSETS, selection=[step], resources=resources(sqs_endpoint, queue_urls, database_url), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "exists only in memory" in str(failure.step_failure_data.error)
