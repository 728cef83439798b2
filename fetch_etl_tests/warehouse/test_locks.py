"""Advisory locks: one named id each, every wait bounded, and what an ingest run does while rotate-key runs."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.masking import MaskingKeyError
from fetch_etl.ops import pii_admin
from fetch_etl.warehouse import locks
from fetch_etl.warehouse.key_registry import RotationInProgressError, check_mask_key
from fetch_etl.warehouse.locks import AdvisoryLock, LockWaitError
from fetch_etl.warehouse.resource import PostgresResource
from fetch_etl_tests.helpers import login_body, queue_counts, resources, run_pipeline, send
from fetch_etl_tests.ops.test_rotate_key import NEW, OLD, _fill

PACKAGE = Path(__file__).resolve().parents[2] / "fetch_etl"


def _connect(database_url: str) -> Any:
    return PostgresResource(database_url=database_url).connect()


def test_every_advisory_lock_has_its_own_id_in_one_place() -> None:
    members = AdvisoryLock.__members__  # aliases (a second name for one value) show up here only
    assert len({int(lock) for lock in members.values()}) == len(members) == 3
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        if source.name != "locks.py":
            assert not re.search(r"advisory_(xact_)?lock\(|0x0FE7C4E7", text, re.I), f"{source.name} has its own lock"


def test_a_wait_for_a_held_lock_is_bounded_and_names_the_holder(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, application_name="other-tool") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (int(AdvisoryLock.MIGRATION),))
        pid = other.info.backend_pid
        with _connect(database_url) as conn, conn.transaction(), pytest.raises(LockWaitError) as err:
            locks.acquire(conn, AdvisoryLock.MIGRATION, wait_seconds=0.3, xact=True, doing="the schema migration")
    message = str(err.value)
    assert "the schema migration waited 0.3 s for the schema migration lock (advisory lock 0xfe7c4e71)" in message
    assert f"pid {pid} " in message and "application_name 'other-tool'" in message


def test_a_run_passing_the_key_check_does_not_make_rotate_key_fail(database_url: str) -> None:
    """The key check holds the registry lock for its transaction; rotate-key takes its own lock, so it proceeds."""
    _fill(database_url, OLD, 300)
    rekeying = threading.Event()
    outcome: dict[str, Any] = {}

    def rotate() -> None:
        try:
            with _connect(database_url) as conn:
                outcome["result"] = pii_admin.rotate_key(
                    conn, OLD, NEW, page_size=100, on_page=lambda _: rekeying.set()
                )
        except Exception as err:  # reported by the assertion below
            outcome["error"] = err
            rekeying.set()

    with _connect(database_url) as run, run.transaction():
        check_mask_key(run, OLD.key_id, "siv")  # inside an open transaction: its registry lock stays held
        worker = threading.Thread(target=rotate)
        worker.start()
        assert rekeying.wait(timeout=60)
        assert "error" not in outcome, outcome["error"]
    worker.join(timeout=60)  # retiring the old key waited (bounded) for the key check's transaction to end
    result = outcome["result"]
    assert result.complete and result.rekeyed["user_logins"] == 300


def test_a_key_check_during_a_rotation_waits_then_says_a_rotation_is_running(database_url: str) -> None:
    _fill(database_url, OLD, 600)
    started, proceed = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def on_page(progress: pii_admin.RotationProgress) -> None:
        started.set()
        proceed.wait(timeout=60)

    def rotate() -> None:
        with _connect(database_url) as conn:
            outcome["result"] = pii_admin.rotate_key(conn, OLD, NEW, page_size=100, on_page=on_page)

    worker = threading.Thread(target=rotate)
    worker.start()
    try:
        assert started.wait(timeout=60)
        with _connect(database_url) as conn:
            with pytest.raises(RotationInProgressError) as err:
                check_mask_key(conn, OLD.key_id, "siv", rotation_wait_seconds=0.5)
            rotating_pid = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'fetch-etl' AND pid <> pg_backend_pid() "
                "AND datname = current_database()"
            ).fetchall()
    finally:
        proceed.set()
        worker.join(timeout=60)
    message = str(err.value)
    assert "a `fetch-etl rotate-key` is re-keying this database" in message
    assert "waited 0.5 s" in message and "the messages stay in the queue" in message
    assert any(f"pid {pid} " in message for (pid,) in rotating_pid)
    assert outcome["result"].complete

    with _connect(database_url) as conn:  # afterwards: the new key is the active one
        with pytest.raises(MaskingKeyError):
            check_mask_key(conn, OLD.key_id, "siv")
        check_mask_key(conn, NEW.key_id, "siv")


def test_an_ingest_run_during_a_rotation_receives_nothing(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [login_body(), login_body(user_id="b")])
    with psycopg.connect(database_url, autocommit=True) as rotation:  # holds the lock as rotate-key does
        rotation.execute("SELECT pg_advisory_lock(%s)", (int(AdvisoryLock.ROTATION),))
        result = run_pipeline(resources(sqs_endpoint, queue_urls, database_url), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "rotate-key` is re-keying this database" in str(failure.step_failure_data.error)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (2, 0), "nothing received, nothing lost"

    assert run_pipeline(resources(sqs_endpoint, queue_urls, database_url)).success  # the rotation is over
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
