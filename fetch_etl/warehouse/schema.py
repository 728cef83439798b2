"""The warehouse schema fetch-etl needs, and a migration that reads the catalog first and changes only what is missing.

`user_logins` may already exist exactly as the reference image creates it; we only add what the pipeline
needs (idempotency key, raw version, load time, key id) and never change existing columns. DDL takes
strong locks (ADD COLUMN and CREATE OR REPLACE VIEW take ACCESS EXCLUSIVE, even when they change nothing),
so a run against an up-to-date schema issues none: it reads the catalog, finds nothing to do, and takes no
lock stronger than ACCESS SHARE. When something is missing, the changes run in one transaction under a
`lock_timeout`, retried a bounded number of times, then fail naming the session whose lock is in the way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from fetch_etl.warehouse import locks
from fetch_etl.warehouse.errors import WarehouseError, first_line

LOCK_TIMEOUT_SECONDS = 3.0  # per attempt: how long one DDL statement may wait for its table lock
MIGRATION_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 1.0
MIGRATION_LOCK_WAIT_SECONDS = 30.0  # another process migrating the same database

# The reference DDL, verbatim: created only when the table is missing.
USER_LOGINS_DDL = """
CREATE TABLE IF NOT EXISTS user_logins(
    user_id             varchar(128),
    device_type         varchar(32),
    masked_ip           varchar(256),
    masked_device_id    varchar(256),
    locale              varchar(32),
    app_version         integer,
    create_date         date
)"""


@dataclass(frozen=True)
class Table:
    """A table: the DDL that creates it when missing, and the nullable columns added to it when missing."""

    name: str
    create: str
    added: tuple[tuple[str, str], ...] = ()  # (column, SQL type), never part of `create`


TABLES: tuple[Table, ...] = (
    Table(
        "user_logins",
        USER_LOGINS_DDL,
        (("message_id", "text"), ("app_version_raw", "text"), ("loaded_at", "timestamptz"), ("mask_key_id", "text")),
    ),
    Table(
        "fetch_etl_mask_keys",
        """
    CREATE TABLE IF NOT EXISTS fetch_etl_mask_keys(
        key_id         text PRIMARY KEY,
        mode           text NOT NULL,
        first_used_at  timestamptz NOT NULL DEFAULT now(),
        retired_at     timestamptz
    )""",
    ),
    Table(
        "user_logins_rejected",
        """
    CREATE TABLE IF NOT EXISTS user_logins_rejected(
        message_id        text PRIMARY KEY,
        reason_code       text NOT NULL,
        reason            text NOT NULL,
        received_at       timestamptz NOT NULL,
        dead_lettered_at  timestamptz
    )""",
        (
            # Rejects keep tokens of their ip/device_id when those were usable strings (never clear values).
            ("masked_ip", "varchar(256)"),
            ("masked_device_id", "varchar(256)"),
            ("mask_key_id", "text"),
            # The ack path (docs/reliability.md): why a dead-letter forward failed, when the message was
            # sent (for the time left before the queue's retention drops it), its latest redrive.
            ("dead_letter_error", "text"),
            ("sent_at", "timestamptz"),
            ("redriven_at", "timestamptz"),
        ),
    ),
)

# (index name, table, DDL)
INDEXES: tuple[tuple[str, str, str], ...] = (
    (
        "user_logins_message_id_key",
        "user_logins",
        "CREATE UNIQUE INDEX IF NOT EXISTS user_logins_message_id_key ON user_logins (message_id)",
    ),
    (
        "user_logins_loaded_at_idx",
        "user_logins",
        "CREATE INDEX IF NOT EXISTS user_logins_loaded_at_idx ON user_logins (loaded_at)",
    ),
)

# (view name, its query): the analysts' duplicate views.
VIEWS: tuple[tuple[str, str], ...] = tuple(
    (
        f"user_logins_duplicate_{name}",
        f"""
    SELECT {column} AS token, count(*) AS logins, count(DISTINCT user_id) AS distinct_users,
           min(create_date) AS first_create_date, max(create_date) AS last_create_date
    FROM user_logins WHERE {column} IS NOT NULL
    GROUP BY {column} HAVING count(*) > 1""",
    )
    for name, column in (("ips", "masked_ip"), ("devices", "masked_device_id"))
)


class MigrationError(WarehouseError):
    """The schema could not be brought up to date; one sentence saying why and what to do."""


@dataclass(frozen=True)
class Change:
    """One missing piece of the schema and the statement that adds it."""

    table: str  # the relation whose lock the statement needs
    description: str
    statement: str


def _existing(conn: psycopg.Connection, names: Sequence[str]) -> set[str]:
    """Which relations are visible in the search path, read from pg_class.

    Not with to_regclass() alone: it answers from the session's cache, which may not yet know a table that
    another session created after our transaction began; scanning pg_class takes in those invalidations.
    """
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%s::text[]) AND pg_table_is_visible(c.oid)",
        (list(names),),
    )
    return {str(row[0]) for row in rows.fetchall()}


def _columns(conn: psycopg.Connection, tables: Sequence[str]) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT n, a.attname FROM unnest(%s::text[]) AS n
        JOIN pg_attribute a ON a.attrelid = to_regclass(n) AND a.attnum > 0 AND NOT a.attisdropped""",
        (list(tables),),
    )
    return {(str(table), str(column)) for table, column in rows.fetchall()}


def _stale_views(conn: psycopg.Connection, present: set[str]) -> set[str]:
    """Existing views whose definition differs from ours: both deparsed by this server, ours via a temp view."""
    stale: set[str] = set()
    for number, (name, query) in enumerate(VIEWS):
        if name not in present:
            continue
        probe = f"fetch_etl_view_probe_{number}"
        try:
            with conn.transaction(force_rollback=True):  # the probe view never outlives this savepoint
                conn.execute(f"CREATE TEMP VIEW {probe} AS {query}")
                row = conn.execute(
                    "SELECT pg_get_viewdef(to_regclass(%s)), pg_get_viewdef(to_regclass(%s))",
                    (name, f"pg_temp.{probe}"),
                ).fetchone()
        except psycopg.errors.InsufficientPrivilege as err:
            raise MigrationError(
                f"role {conn.info.user!r} may not create temporary objects ({first_line(err)}), which every run "
                "needs (the merge path stages rows in a temp table): GRANT TEMPORARY ON DATABASE to it "
                "(docs/deployment.md)"
            ) from None
        existing, wanted = row or (None, None)
        if existing != wanted:
            stale.add(name)
    return stale


def plan(conn: psycopg.Connection) -> list[Change]:
    """What is missing from the schema, in the order to add it; reads the catalog only (call in a transaction)."""
    tables = [t.name for t in TABLES]
    present = _existing(conn, [*tables, *(i[0] for i in INDEXES), *(v[0] for v in VIEWS)])
    columns = _columns(conn, tables)
    changes: list[Change] = []
    for table in TABLES:
        if table.name not in present:
            changes.append(Change(table.name, f"create table {table.name}", table.create))
        for column, sql_type in table.added:
            if (table.name, column) not in columns:
                statement = f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {column} {sql_type}"
                changes.append(Change(table.name, f"add column {table.name}.{column} {sql_type}", statement))
    for name, table_name, ddl in INDEXES:
        if name not in present:
            changes.append(Change(table_name, f"create index {name} on {table_name}", ddl))
    stale = _stale_views(conn, present) if "user_logins" in present else set()
    for name, query in VIEWS:
        if name not in present or name in stale:
            verb = "replace" if name in stale else "create"
            changes.append(Change(name, f"{verb} view {name}", f"CREATE OR REPLACE VIEW {name} AS {query}"))
    return changes


def _set_lock_timeout(conn: psycopg.Connection, seconds: float) -> None:
    conn.execute(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")


def _blocked(conn: psycopg.Connection, change: Change, seconds: float, attempts: int) -> MigrationError:
    found = locks.relation_holders(conn, change.table)
    who = "; ".join(h.describe() for h in found) if found else "no session holds a lock on it any more"
    return MigrationError(
        f"the schema migration could not lock {change.table} within {seconds:g} s in {attempts} attempts "
        f"(to {change.description}): {who}; end that transaction, or run `fetch-etl migrate` when it is gone"
    )


def _forbidden(conn: psycopg.Connection, changes: Sequence[Change], err: psycopg.Error) -> MigrationError:
    listed = ", ".join(c.description for c in changes[:4]) + (", …" if len(changes) > 4 else "")
    return MigrationError(
        f"the warehouse schema lacks {len(changes)} thing(s) fetch-etl needs ({listed}) and role "
        f"{conn.info.user!r} may not add them ({first_line(err)}); run `fetch-etl migrate` once as the owner "
        "of the tables (docs/deployment.md), then run again"
    )


def migrate(
    conn: psycopg.Connection,
    *,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    attempts: int = MIGRATION_ATTEMPTS,
) -> list[Change]:
    """Add whatever the schema lacks; returns what changed ([] when it was up to date: no DDL, no strong lock).

    Safe to run concurrently and repeatedly: the changes are planned again under an advisory lock, so two
    runs never race on DDL. Each attempt waits at most `lock_timeout` for a table lock; after `attempts`,
    fails with one sentence naming the session that holds the lock.
    """
    change = Change("user_logins", "read the schema", "")
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction(force_rollback=True):
                _set_lock_timeout(conn, lock_timeout)
                if not plan(conn):
                    return []
            with conn.transaction():
                _set_lock_timeout(conn, lock_timeout)
                locks.acquire(
                    conn,
                    locks.AdvisoryLock.MIGRATION,
                    wait_seconds=MIGRATION_LOCK_WAIT_SECONDS,
                    xact=True,
                    doing="the schema migration",
                )
                changes = plan(conn)  # again: another process may have migrated while we waited
                for change in changes:
                    conn.execute(change.statement)
            return changes
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise _blocked(conn, change, lock_timeout, attempts) from None
            time.sleep(RETRY_PAUSE_SECONDS)
        except psycopg.errors.InsufficientPrivilege as err:
            with conn.transaction(force_rollback=True):
                pending = plan(conn)
            raise _forbidden(conn, pending, err) from None
    raise AssertionError("unreachable")
