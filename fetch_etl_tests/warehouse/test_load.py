"""warehouse.load_run on real PostgreSQL: the COPY fast path, the merge path on redelivery, and what both store."""

from __future__ import annotations

import threading
import time
from typing import Any

import pandas as pd
import psycopg

from fetch_etl.logins.frame import loadable, mask_messages, rejected
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.warehouse.load import LOGIN_COLUMNS, load_run, migrate
from fetch_etl_tests.helpers import FOO_BAR, TEST_KEY_HEX, login_body

MASKER = HmacMasker(bytes.fromhex(TEST_KEY_HEX))


def _frame(ids: list[str], **fields: Any) -> pd.DataFrame:
    messages = [
        QueueMessage(mid, "handle", login_body(ip=f"10.0.0.{i}", **fields), "1700000000000", 1)
        for i, mid in enumerate(ids)
    ]
    return mask_messages(messages, MASKER)


def _stored(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {', '.join(LOGIN_COLUMNS)}, loaded_at FROM user_logins ORDER BY message_id").fetchall()


def _expected(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    rows = loadable(frame).loc[:, list(LOGIN_COLUMNS)].astype(object)
    rows = rows.where(rows.notna(), None)
    return sorted(rows.itertuples(index=False, name=None))


def test_a_new_batch_takes_the_copy_path_and_stores_every_column(database_url: str) -> None:
    frame = _frame([f"m{i:03}" for i in range(50)], locale=None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        result = load_run(conn, loadable(frame), rejected(frame))
        stored = _stored(conn)
        now = conn.execute("SELECT now()").fetchone()
    assert (result.path, result.inserted, result.already_present) == ("copy", 50, 0)
    assert [row[:-1] for row in stored] == _expected(frame)
    assert all(row[-1] is not None and row[-1] <= now[0] for row in stored)  # loaded_at: the load's own now()
    assert len({row[-1] for row in stored}) == 1, "one transaction, one loaded_at"
    assert all(row[LOGIN_COLUMNS.index("locale")] is None for row in stored), "missing locale is NULL"


def test_a_redelivered_batch_falls_back_to_merge_and_inserts_only_the_new_rows(database_url: str) -> None:
    first = _frame([f"m{i:03}" for i in range(30)])
    mixed = _frame([f"m{i:03}" for i in range(20, 60)])  # 10 already loaded, 30 new
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        load_run(conn, loadable(first), rejected(first))
        result = load_run(conn, loadable(mixed), rejected(mixed))
        again = load_run(conn, loadable(mixed), rejected(mixed))
        count = conn.execute("SELECT count(*), count(DISTINCT message_id) FROM user_logins").fetchone()
    assert (result.path, result.inserted, result.already_present) == ("merge", 30, 10)
    assert (again.path, again.inserted, again.already_present) == ("merge", 0, 40)
    assert count == (60, 60)


def test_a_message_twice_in_one_batch_is_stored_once(database_url: str) -> None:
    frame = _frame(["dup", "dup", "other"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        result = load_run(conn, loadable(frame), rejected(frame))
        ids = [row[0] for row in conn.execute("SELECT message_id FROM user_logins ORDER BY 1").fetchall()]
    assert (result.path, result.inserted, result.already_present) == ("copy", 2, 1)
    assert ids == ["dup", "other"]


def test_rejects_are_recorded_beside_a_copied_batch_in_the_same_transaction(database_url: str) -> None:
    messages = [
        QueueMessage("good", "h", login_body(), "1700000000000", 1),
        QueueMessage("bad", "h", FOO_BAR, "1700000000000", 1),
    ]
    frame = mask_messages(messages, MASKER)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        result = load_run(conn, loadable(frame), rejected(frame))
        reasons = conn.execute("SELECT message_id, reason_code FROM user_logins_rejected").fetchall()
    assert (result.path, result.inserted, result.rejects_recorded, result.superseded) == ("copy", 1, 1, [])
    assert reasons == [("bad", "not_a_login")]


def _waiting_on_a_lock(database_url: str) -> bool:
    """Whether a session of this database is blocked on a lock (another transaction's row)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_a_concurrent_load_of_the_same_message_waits_then_merges(database_url: str) -> None:
    """Another run's open transaction holds one of our MessageIds: our COPY waits on the unique index, then merges."""
    ours = _frame(["shared", "mine"])
    outcome: dict[str, Any] = {}
    with psycopg.connect(database_url, autocommit=True) as setup:
        migrate(setup)
    with psycopg.connect(database_url) as other:
        other.execute(  # an uncommitted insert of "shared", as a concurrent run's load would leave it
            "INSERT INTO user_logins (message_id, user_id) VALUES ('shared', 'someone')"
        )

        def load() -> None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                outcome["result"] = load_run(conn, loadable(ours), rejected(ours))

        worker = threading.Thread(target=load)
        worker.start()
        # Wait for the condition, not for a time: the load's backend waiting on the other transaction's lock.
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(database_url) and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_on_a_lock(database_url), "the COPY must wait for the other transaction, not skip or fail"
        assert "result" not in outcome
        other.commit()
        worker.join(timeout=30)
    result = outcome["result"]
    assert (result.path, result.inserted, result.already_present) == ("merge", 1, 1)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT message_id, user_id FROM user_logins ORDER BY 1").fetchall()
    assert rows[0] == ("mine", ours.loc[ours["message_id"] == "mine", "user_id"].iloc[0])
    assert rows[1] == ("shared", "someone")
