"""Unreachable or missing services fail with one clear sentence, and a failed run gives every message back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.messages import QueueError
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse.resource import PostgresResource, WarehouseError
from fetch_etl_tests.helpers import closed_port, queue_counts, resources, run_pipeline, send, sqs_resource


def _unreachable_warehouse(port: int) -> PostgresResource:
    return PostgresResource(database_url=f"postgresql://postgres:s3cret@127.0.0.1:{port}/warehouse", connect_timeout=2)


def _assert_warehouse_sentence(text: str, port: int) -> None:
    assert f"127.0.0.1:{port}" in text
    assert "'warehouse'" in text
    assert "s3cret" not in text
    assert "\n" not in text.strip()


def test_unreachable_queue_is_one_sentence_naming_endpoint_and_queue() -> None:
    port = closed_port()
    queue_url = f"http://127.0.0.1:{port}/000000000000/login-queue"

    started = time.monotonic()
    with pytest.raises(QueueError) as raised:
        SqsResource(queue_url=queue_url, max_attempts=1).depth()

    message = str(raised.value)
    assert f"endpoint http://127.0.0.1:{port}" in message
    assert queue_url in message
    assert "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__, "no botocore chain attached"
    assert time.monotonic() - started < 10


def test_missing_queue_is_named(sqs_endpoint: str, queue_urls: QueueUrls) -> None:
    missing = queue_urls.queue_url.rsplit("/", 1)[0] + "/no-such-login-queue"
    sqs = sqs_resource(sqs_endpoint, queue_urls, queue_url=missing)

    with pytest.raises(QueueError) as raised:
        sqs.depth()

    message = str(raised.value)
    assert missing in message
    assert "NonExistentQueue" in message or "does not exist" in message
    assert "\n" not in message


def test_unreachable_database_is_one_sentence_without_the_password() -> None:
    port = closed_port()

    with pytest.raises(WarehouseError) as raised, _unreachable_warehouse(port).connect():
        pass

    message = str(raised.value)
    assert message.startswith("cannot connect to database 'warehouse'")
    _assert_warehouse_sentence(message, port)


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://postgres:s3cret@127.0.0.1:notaport/warehouse",
        "postgresql://postgres:s3cret@127.0.0.1:5432/warehouse?foo=bar",
        "host=127.0.0.1 port={port} dbname=warehouse user=postgres password=s3cret",
    ],
    ids=["bad-port", "unknown-parameter", "keyword-conninfo"],
)
def test_unusable_database_urls_never_echo_the_password(database_url: str) -> None:
    resource = PostgresResource(database_url=database_url.format(port=closed_port()), connect_timeout=2)

    with pytest.raises(WarehouseError) as raised, resource.connect():
        pass

    message = str(raised.value)
    assert message.startswith("cannot connect to ")
    assert "s3cret" not in message
    assert "\n" not in message


def test_run_against_an_unreachable_database_fails_clearly_and_deletes_nothing(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    port = closed_port()
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(12, seed=21, malformed_rate=0), '{"foo": "bar"}'])
    warehouse = _unreachable_warehouse(port)
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1)
    res = resources(sqs_endpoint, queue_urls, warehouse.database_url, sqs=sqs)
    res["postgres"] = warehouse  # with its short connect_timeout

    result = run_pipeline(res, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_login_messages", "the database is checked before anything is received"
    error = failure.step_failure_data.error
    assert error is not None
    while error.cause is not None:  # Dagster wraps the user error; ours is the innermost one
        error = error.cause
    assert error.cls_name == "WarehouseError"
    prefix = f"{WarehouseError.__module__}.WarehouseError: "  # Dagster names the class by its module
    assert error.message.startswith(f"{prefix}cannot connect to database 'warehouse'")
    _assert_warehouse_sentence(error.message.removeprefix(prefix), port)
    assert "s3cret" not in str(failure.step_failure_data.error)
    assert queue_counts(sqs_client, queue_urls.dlq_url) == (0, 0), "the reject was forwarded before any commit"

    assert queue_counts(sqs_client, queue_urls.queue_url) == (13, 0), "nothing was even received"
