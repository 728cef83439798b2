"""Every PostgreSQL advisory lock fetch-etl takes, with its own id, and bounded ways to take them.

Advisory lock ids are per database and shared by every program on it, so they live here, one name each:
two features sharing an id block each other for no reason. `lock_timeout` does not bound waits for these
locks reliably across versions, so nothing here waits in the server: a try-lock is polled until a deadline,
and the error names who holds the lock and for how long (pid, application_name, state; never query text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum

import psycopg

from fetch_etl.warehouse.errors import WarehouseError

POLL_SECONDS = 0.05


class AdvisoryLock(IntEnum):
    """The advisory locks of fetch-etl; each value is a distinct bigint id in the 0x0FE7C4E7x range."""

    MIGRATION = 0x0FE7C4E71  # one schema migration at a time (held for the migration's transaction)
    KEY_REGISTRY = 0x0FE7C4E72  # one writer of fetch_etl_mask_keys at a time (key check, retire)
    ROTATION = 0x0FE7C4E73  # one `fetch-etl rotate-key` per database (held for the whole rotation)

    @property
    def purpose(self) -> str:
        return _PURPOSE[self]


_PURPOSE = {
    AdvisoryLock.MIGRATION: "the schema migration lock",
    AdvisoryLock.KEY_REGISTRY: "the masking-key registry lock",
    AdvisoryLock.ROTATION: "the rotate-key lock",
}


class LockWaitError(WarehouseError):
    """A lock was not granted within its bound; one sentence naming the lock and who holds it."""


@dataclass(frozen=True)
class Holder:
    """A session holding a lock, as pg_locks and pg_stat_activity describe it (no query text)."""

    pid: int
    mode: str
    role: str
    application_name: str
    state: str  # 'unknown' when our role may not see it (pg_read_all_stats)
    seconds: float | None  # how long its transaction (else its session) has been open; None when not visible

    def describe(self) -> str:
        app = f", application_name {self.application_name!r}" if self.application_name else ""
        since = f"for {self.seconds:.0f} s" if self.seconds is not None else "for a time our role may not see"
        return f"pid {self.pid} (role {self.role!r}{app}, state {self.state!r}) holds {self.mode} {since}"


_HOLDERS = """
SELECT l.pid, l.mode, coalesce(a.usename::text, '?'), coalesce(a.application_name, ''),
       coalesce(a.state, 'unknown'), extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::float8
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND {}
ORDER BY 6 DESC NULLS LAST"""


def _holders(conn: psycopg.Connection, condition: str, params: tuple[object, ...]) -> list[Holder]:
    rows = conn.execute(_HOLDERS.format(condition), params).fetchall()  # type: ignore[arg-type]
    return [Holder(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5]) for r in rows]


def holders(conn: psycopg.Connection, lock: AdvisoryLock) -> list[Holder]:
    """Other sessions holding an advisory lock (a bigint key is split into classid/objid in pg_locks)."""
    key = int(lock)
    condition = "l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 1"
    return _holders(conn, condition, (key >> 32, key & 0xFFFFFFFF))


def relation_holders(conn: psycopg.Connection, relation: str) -> list[Holder]:
    """Other sessions holding any lock on a table or view (whichever mode: the one in our way is among them)."""
    return _holders(conn, "l.locktype = 'relation' AND l.relation = to_regclass(%s)", (relation,))


def _held_by(conn: psycopg.Connection, lock: AdvisoryLock) -> str:
    found = holders(conn, lock)
    return "; ".join(h.describe() for h in found) if found else "its holder has just released it"


def acquire(conn: psycopg.Connection, lock: AdvisoryLock, *, wait_seconds: float, xact: bool, doing: str) -> None:
    """Take an exclusive advisory lock, polling a try-lock until `wait_seconds` pass, then fail naming the holder.

    `xact=True` takes the transaction-level lock (released at commit/rollback; call inside a transaction);
    otherwise the session-level one, which the caller must `release`.
    """
    function = "pg_try_advisory_xact_lock" if xact else "pg_try_advisory_lock"
    deadline = time.monotonic() + wait_seconds
    while True:
        row = conn.execute(f"SELECT {function}(%s)", (int(lock),)).fetchone()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise LockWaitError(
                f"{doing} waited {wait_seconds:g} s for {lock.purpose} (advisory lock {int(lock):#x}) and gave up: "
                f"{_held_by(conn, lock)}"
            )
        time.sleep(POLL_SECONDS)


def try_acquire(conn: psycopg.Connection, lock: AdvisoryLock) -> bool:
    """Take a session-level advisory lock if it is free, without waiting."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (int(lock),)).fetchone()
    return bool(row and row[0])


def release(conn: psycopg.Connection, lock: AdvisoryLock) -> None:
    """Release a session-level advisory lock taken with `acquire(..., xact=False)`."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (int(lock),))


def wait_until_free(conn: psycopg.Connection, lock: AdvisoryLock, *, wait_seconds: float) -> list[Holder]:
    """Wait, without taking it, until no other session holds `lock`; returns the holders left at the deadline."""
    deadline = time.monotonic() + wait_seconds
    while True:
        found = holders(conn, lock)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(POLL_SECONDS * 4)
