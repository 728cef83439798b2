"""The migration reads the catalog first: an up-to-date schema gets no DDL and no strong lock, so runs never queue
behind an analyst's open transaction; what is missing is added under a bounded lock wait that names the blocker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from fetch_etl.local.stack import QueueUrls
from fetch_etl.warehouse import schema
from fetch_etl.warehouse.resource import PostgresResource
from fetch_etl.warehouse.schema import MigrationError, migrate
from fetch_etl_tests.helpers import (
    FOO_BAR,
    NoDeleteSqs,
    login_body,
    metadata,
    resources,
    run_pipeline,
    send,
    sqs_resource,
)
from fetch_etl_tests.helpers import wait_until_none_in_flight as wait_none_in_flight

TABLES = ("user_logins", "user_logins_rejected", "fetch_etl_mask_keys")
VIEWS = ("user_logins_duplicate_ips", "user_logins_duplicate_devices")
# Terminates a holder that a hanging run would otherwise wait behind forever; the test then sees it gone.
HOLDER_IDLE_LIMIT = "60s"


def _migrated(database_url: str) -> list[schema.Change]:
    with PostgresResource(database_url=database_url).connect() as conn:
        return migrate(conn)


@contextmanager
def holding(database_url: str, *statements: str, application_name: str = "analyst") -> Iterator[psycopg.Connection]:
    """Another session with an open transaction that ran `statements` (an analyst's notebook, say)."""
    options = f"-c idle_in_transaction_session_timeout={HOLDER_IDLE_LIMIT}"
    with psycopg.connect(database_url, application_name=application_name, options=options) as holder:
        for statement in statements:
            holder.execute(statement)
        yield holder
        holder.rollback()


def _still_holding(holder: psycopg.Connection) -> bool:
    """True when the holder's transaction is still open: nothing had to wait for it to end."""
    try:
        holder.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return holder.info.transaction_status == TransactionStatus.INTRANS


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    return {row[0] for row in rows.fetchall()}


def test_a_fresh_database_gets_everything_then_nothing_to_do(database_url: str) -> None:
    first = _migrated(database_url)
    described = [change.description for change in first]
    assert described[:1] == ["create table user_logins"]
    assert {"create table user_logins_rejected", "create table fetch_etl_mask_keys"} <= set(described)
    assert "create index user_logins_message_id_key on user_logins" in described
    assert {f"create view {view}" for view in VIEWS} <= set(described)
    with psycopg.connect(database_url) as conn:
        rejected = _columns(conn, "user_logins_rejected")
        assert {"dead_letter_error", "sent_at", "redriven_at", "masked_ip"} <= rejected
        assert {"message_id", "loaded_at", "mask_key_id", "app_version_raw"} <= _columns(conn, "user_logins")
    assert _migrated(database_url) == [], "an up-to-date schema: nothing to do"


def test_only_what_is_missing_is_added(database_url: str) -> None:
    _migrated(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE user_logins_rejected DROP COLUMN redriven_at")
        conn.execute("DROP INDEX user_logins_loaded_at_idx")
    changes = _migrated(database_url)
    assert [c.description for c in changes] == [
        "add column user_logins_rejected.redriven_at timestamptz",
        "create index user_logins_loaded_at_idx on user_logins",
    ]
    assert _migrated(database_url) == []


def test_a_view_whose_definition_differs_is_replaced(database_url: str) -> None:
    _migrated(database_url)
    with psycopg.connect(database_url) as conn:  # same columns, other rows: only the definition tells
        conn.execute(
            "CREATE OR REPLACE VIEW user_logins_duplicate_ips AS SELECT masked_ip AS token, count(*) AS logins, "
            "count(DISTINCT user_id) AS distinct_users, min(create_date) AS first_create_date, "
            "max(create_date) AS last_create_date FROM user_logins GROUP BY masked_ip HAVING count(*) > 2"
        )
    assert [c.description for c in _migrated(database_url)] == ["replace view user_logins_duplicate_ips"]
    assert _migrated(database_url) == []


def test_an_up_to_date_schema_migrates_beside_a_strong_lock_holder(database_url: str) -> None:
    """SHARE UPDATE EXCLUSIVE conflicts with every mode stronger than ROW EXCLUSIVE (and with none up to it)."""
    _migrated(database_url)
    lock = f"LOCK TABLE {', '.join(TABLES + VIEWS)} IN SHARE UPDATE EXCLUSIVE MODE"
    with holding(database_url, lock) as holder:
        with PostgresResource(database_url=database_url).connect() as conn:
            assert migrate(conn, lock_timeout=0.2, attempts=1) == []
        assert _still_holding(holder)


def test_a_missing_column_behind_a_reader_fails_within_the_bound_naming_the_blocker(database_url: str) -> None:
    _migrated(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE user_logins_rejected DROP COLUMN redriven_at")
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        with PostgresResource(database_url=database_url).connect() as conn:
            try:
                outcome["changes"] = migrate(conn, lock_timeout=0.3, attempts=2)
            except MigrationError as err:
                outcome["error"] = str(err)

    with holding(database_url, "SELECT count(*) FROM user_logins_rejected", application_name="notebook") as holder:
        pid = holder.info.backend_pid
        worker = threading.Thread(target=attempt)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the migration must give up within its bound, not queue behind the reader"
        assert _still_holding(holder)
    error = outcome["error"]
    assert "could not lock user_logins_rejected within 0.3 s in 2 attempts" in error
    assert "add column user_logins_rejected.redriven_at" in error
    assert f"pid {pid} " in error and "AccessShareLock" in error
    assert "application_name 'notebook'" in error and "idle in transaction" in error
    assert "\n" not in error and "SELECT" not in error, "one sentence, and never the blocker's query text"

    assert [c.description for c in _migrated(database_url)] == [
        "add column user_logins_rejected.redriven_at timestamptz"
    ], "once the reader is gone the change goes through"


def test_concurrent_migrations_of_a_fresh_database_both_succeed(database_url: str) -> None:
    results: list[list[schema.Change]] = []
    workers = [threading.Thread(target=lambda: results.append(_migrated(database_url))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(results) == 3
    assert sum(bool(changes) for changes in results) == 1, "one migrates, the others find nothing to do"


@pytest.mark.parametrize(
    "held",
    [
        "SELECT count(*) FROM user_logins",  # an analyst's open read transaction: ACCESS SHARE
        f"LOCK TABLE {', '.join(TABLES + VIEWS)} IN SHARE UPDATE EXCLUSIVE MODE",  # anything above ROW EXCLUSIVE
    ],
    ids=["open-read-transaction", "share-update-exclusive"],
)
def test_a_run_completes_while_another_session_holds_the_tables(
    held: str, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """A run on an up-to-date schema: redeliveries acknowledged from what is stored, a new login, a new reject."""
    send(sqs_client, queue_urls.queue_url, [login_body(), login_body(user_id="b"), FOO_BAR])
    crashing = NoDeleteSqs(**sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1).model_dump())
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url, sqs=crashing))  # migrates; nothing acked
    wait_none_in_flight(sqs_client, queue_urls.queue_url)
    send(sqs_client, queue_urls.queue_url, [FOO_BAR, login_body(user_id="c")])

    with holding(database_url, held) as holder:
        meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))
        assert _still_holding(holder), "the run waited for the other session's transaction to end"

    assert (meta["received"], meta["already_stored"], meta["loaded"], meta["load_path"]) == (5, 3, 1, "copy")
    assert (meta["rejected"], meta["dead_lettered"], meta["deleted_from_queue"]) == (1, 1, 5)
