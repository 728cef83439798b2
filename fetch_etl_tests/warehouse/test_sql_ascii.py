"""The load and the acknowledgement behave the same on a SQL_ASCII warehouse as on a UTF8 one.

psycopg returns text as bytes when the client encoding is SQL_ASCII, which it is by default on a SQL_ASCII
database (servers initialised without a UTF8 locale); every connection we open must ask for UTF8.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import uuid4

import pytest

from fetch_etl.local.servers import create_database, drop_database
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse.resource import PostgresResource
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NOT_JSON,
    NoDeleteSqs,
    drain,
    login_body,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
    wait_until_none_in_flight,
)

EMOJI_USER = "🦊 user ß ✓ 日本"
EMOJI_LOCALE = "ß-🇩🇪"


@pytest.fixture(params=["UTF8", "SQL_ASCII"])
def encoded_database_url(request: pytest.FixtureRequest, postgres_server_url: str) -> Iterator[str]:
    """A fresh database of each server encoding (SQL_ASCII with the C locale, as minimal images create it)."""
    name = f"t_{uuid4().hex[:12]}"
    url = create_database(postgres_server_url, name, encoding=request.param)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


def _read(database_url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read back through the pipeline's own connection."""
    with PostgresResource(database_url=database_url).connect() as conn:
        return conn.execute(query, params).fetchall()


def test_the_database_has_the_encoding_asked_for(encoded_database_url: str) -> None:
    (encoding,) = _read(
        encoded_database_url, "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    )[0]
    assert encoding in ("UTF8", "SQL_ASCII")


def test_loads_rejects_dead_letters_and_deletes_with_non_ascii_text(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, encoded_database_url: str
) -> None:
    bodies = [
        *generate_bodies(20, seed=11, malformed_rate=0),
        login_body(user_id=EMOJI_USER, locale=EMOJI_LOCALE),
        FOO_BAR,
        NOT_JSON,
    ]
    ids = send(sqs_client, queue_urls.queue_url, bodies)

    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, encoded_database_url)))

    assert (meta["received"], meta["loaded"], meta["rejected"], meta["dead_lettered"]) == (23, 21, 2, 2)
    assert meta["deleted_from_queue"] == 23 and meta["delete_failures"] == 0
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    dead = {m["MessageAttributes"]["original_message_id"]["StringValue"] for m in drain(sqs_client, queue_urls.dlq_url)}
    assert dead == {ids[21], ids[22]}

    rows = _read(encoded_database_url, "SELECT message_id, user_id, locale, octet_length(user_id) FROM user_logins")
    assert all(isinstance(value, str) for row in rows for value in row[:2])
    assert {row[0] for row in rows} == set(ids[:21])
    emoji = next(row for row in rows if row[0] == ids[20])
    assert emoji[1:] == (EMOJI_USER, EMOJI_LOCALE, len(EMOJI_USER.encode())), "stored as UTF-8, read back intact"
    rejects = dict(_read(encoded_database_url, "SELECT message_id, reason_code FROM user_logins_rejected"))
    assert rejects == {ids[21]: "not_a_login", ids[22]: "invalid_json"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rejects.items())


def test_a_redelivery_is_recognised_from_what_is_stored_and_acknowledged(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, encoded_database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [login_body(user_id=EMOJI_USER), login_body(), FOO_BAR])
    crashing = NoDeleteSqs(**sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1).model_dump())
    first = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, encoded_database_url, sqs=crashing)))
    assert (first["loaded"], first["dead_lettered"], first["delete_failures"]) == (2, 1, 3)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    second = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, encoded_database_url)))

    # The stored keys read back as str, so they match the received MessageIds: nothing is evaluated twice.
    assert (second["received"], second["already_stored"], second["loaded"], second["load_path"]) == (3, 3, 0, "none")
    assert second["dead_lettered"] == 0 and second["deleted_from_queue"] == 3
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert len(drain(sqs_client, queue_urls.dlq_url)) == 1
    assert _read(encoded_database_url, "SELECT count(*) FROM user_logins WHERE user_id = %s", (EMOJI_USER,)) == [(1,)]


def test_a_value_within_the_character_limit_but_not_the_byte_limit_does_not_fail_the_run(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, postgres_server_url: str
) -> None:
    name = f"t_{uuid4().hex[:12]}"
    url = create_database(postgres_server_url, name, encoding="SQL_ASCII")
    try:
        send(sqs_client, queue_urls.queue_url, [login_body(locale="🇩🇪" * 8)])  # 16 characters, 64 bytes
        result = run_pipeline(resources(sqs_endpoint, queue_urls, url), raise_on_error=False)
        assert result.success, "loaded, or rejected with a reason: never a failed run"
        assert metadata(result)["rejected_by_reason"] == {"too_long_locale": 1}, "varchar(32) holds 32 bytes there"
        assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    finally:
        drop_database(postgres_server_url, name)
