"""The warehouse schema fetch-etl needs, and a migration that reads the catalog first and changes only what is missing.

The one spec of each table is its `Table` of `Column`s below: the reference DDL, the columns the migration
adds, the load's column lists and staging table (load.py), the UI's TableSchema and descriptions
(defs/metadata.py), the checks' token and required columns (probes.py) and the parser's varchar limits
(logins/records.py) are all derived from it. Adding a column is one `Column(...)` here, plus, for a value
taken from the message body, where it is parsed (logins/records.py) and put in the frame (logins/frame.py).

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
from typing import Literal

import psycopg

from fetch_etl.warehouse import locks
from fetch_etl.warehouse.errors import WarehouseError, first_line

LOCK_TIMEOUT_SECONDS = 3.0  # per attempt: how long one DDL statement may wait for its table lock
MIGRATION_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 1.0
MIGRATION_LOCK_WAIT_SECONDS = 30.0  # another process migrating the same database

Origin = Literal["created", "added"]

CREATED: Origin = "created"
ADDED: Origin = "added"


@dataclass(frozen=True)
class Column:
    """One column of a fetch-etl table: the one place its name, type and meaning are written down.

    `sql_type` is spelled as the DDL writes it (varchar(32), timestamptz); `catalog_type` is how PostgreSQL's
    format_type() reports it, which is what the UI and the live-table test compare. `origin` says how the
    column comes to exist: CREATED columns make up the table's CREATE TABLE (for user_logins, exactly the
    reference DDL, so a table the reference image made is already "created"), ADDED ones are nullable columns
    fetch-etl's migration adds when missing and never changes afterwards.
    """

    name: str
    sql_type: str
    description: str
    origin: Origin = ADDED
    constraint: str = ""  # after the type in CREATE TABLE: NOT NULL, PRIMARY KEY, a DEFAULT (CREATED only)
    written: bool = True  # the load writes it from the frame; False: set in SQL (loaded_at, the ack columns)
    token: bool = False  # holds a keyed token (checked for a known shape, shortened in previews)
    required: bool = False  # never NULL in a row fetch-etl loaded (the required_columns_not_null check)

    @property
    def max_chars(self) -> int | None:
        """n of varchar(n): the most characters a value may have (bytes on a SQL_ASCII server); else None."""
        return (
            int(self.sql_type.removeprefix("varchar(").removesuffix(")"))
            if self.sql_type.startswith("varchar(")
            else None
        )

    @property
    def not_null(self) -> bool:
        return "NOT NULL" in self.constraint or "PRIMARY KEY" in self.constraint

    @property
    def catalog_type(self) -> str:
        """The type as format_type() names it: varchar(n) is character varying(n), timestamptz is spelled out."""
        if self.sql_type.startswith("varchar("):
            return "character varying" + self.sql_type.removeprefix("varchar")
        return {"timestamptz": "timestamp with time zone"}.get(self.sql_type, self.sql_type)


@dataclass(frozen=True)
class Table:
    """A table: its columns, in table order; the CREATE TABLE and the added columns are derived from them."""

    name: str
    columns: tuple[Column, ...]
    key: str = ""  # the column that identifies a row (the SQS MessageId); first in `written`

    @property
    def create(self) -> str:
        """CREATE TABLE IF NOT EXISTS with the CREATED columns (for user_logins: the reference DDL, verbatim)."""
        lines = [f"    {c.name:<19} {c.sql_type} {c.constraint}".rstrip() for c in self.columns if c.origin == CREATED]
        return f"\nCREATE TABLE IF NOT EXISTS {self.name}(\n" + ",\n".join(lines) + "\n)"

    @property
    def added(self) -> tuple[tuple[str, str], ...]:
        """(column, SQL type) of the ADDED columns: never part of `create`, added by the migration when missing."""
        return tuple((c.name, c.sql_type) for c in self.columns if c.origin == ADDED)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def written(self) -> tuple[str, ...]:
        """The columns a load writes from the frame (the COPY / INSERT column list): the key, then table order."""
        names = [c.name for c in self.columns if c.written]
        return tuple(sorted(names, key=lambda name: name != self.key))  # stable: only the key moves

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


USER_LOGINS = Table(
    "user_logins",
    (
        Column("user_id", "varchar(128)", "The user who logged in, as sent.", CREATED, required=True),
        Column("device_type", "varchar(32)", "Device type as sent (android, ios, ...).", CREATED),
        Column(
            "masked_ip",
            "varchar(256)",
            "Keyed token of the canonical IP address; equal IPs, equal tokens.",
            CREATED,
            token=True,
            required=True,
        ),
        Column(
            "masked_device_id",
            "varchar(256)",
            "Keyed token of the device id; equal ids, equal tokens.",
            CREATED,
            token=True,
            required=True,
        ),
        Column("locale", "varchar(32)", "Locale as sent; NULL when absent or null.", CREATED),
        Column(
            "app_version",
            "integer",
            "major·1,000,000 + minor·1,000 + patch: distinct versions never collide.",
            CREATED,
            required=True,
        ),
        Column(
            "create_date", "date", "UTC date of the message's SQS SentTimestamp (the body has no timestamp).", CREATED
        ),
        Column("message_id", "text", "SQS MessageId: the idempotency key (unique); NULL only on legacy rows."),
        Column("app_version_raw", "text", "app_version exactly as sent, e.g. 2.3.0, 0.96 or 3.7."),
        Column("loaded_at", "timestamptz", "When fetch-etl's load transaction inserted the row.", written=False),
        Column("mask_key_id", "text", "Short fingerprint of the masking key that made the tokens (never the key)."),
    ),
    key="message_id",
)

MASK_KEYS = Table(
    "fetch_etl_mask_keys",
    (
        Column("key_id", "text", "Fingerprint of a masking key (never the key).", CREATED, "PRIMARY KEY"),
        Column("mode", "text", "The masking mode the key was used with.", CREATED, "NOT NULL"),
        Column(
            "first_used_at", "timestamptz", "When a run first masked with the key.", CREATED, "NOT NULL DEFAULT now()"
        ),
        Column("retired_at", "timestamptz", "When `fetch-etl rotate-key` retired it; NULL while current.", CREATED),
    ),
)

USER_LOGINS_REJECTED = Table(
    "user_logins_rejected",
    (
        Column("message_id", "text", "The rejected message's original SQS MessageId.", CREATED, "PRIMARY KEY"),
        Column("reason_code", "text", "Why the message was rejected (e.g. invalid_json).", CREATED, "NOT NULL"),
        Column("reason", "text", "A readable sentence saying why; never quotes a field value.", CREATED, "NOT NULL"),
        Column("received_at", "timestamptz", "When the run that rejected it received it.", CREATED, "NOT NULL"),
        Column(
            "dead_lettered_at", "timestamptz", "When its copy reached the dead-letter queue.", CREATED, written=False
        ),
        # Rejects keep tokens of their ip/device_id when those were usable strings (never clear values).
        Column("masked_ip", "varchar(256)", "Token of the message's ip, when it was a usable string.", token=True),
        Column("masked_device_id", "varchar(256)", "Token of its device_id, when it was a usable string.", token=True),
        Column("mask_key_id", "text", "Fingerprint of the masking key that made those tokens."),
        # The ack path (docs/reliability.md): why a dead-letter forward failed, when the message was sent
        # (for the time left before the queue's retention drops it), its latest redrive.
        Column("dead_letter_error", "text", "Why the dead-letter queue refused its copy (an SQS code).", written=False),
        Column("sent_at", "timestamptz", "SQS's SentTimestamp of the original message."),
        Column("redriven_at", "timestamptz", "When `fetch-etl redrive` sent the copy evaluated last."),
    ),
    key="message_id",
)

TABLES: tuple[Table, ...] = (USER_LOGINS, MASK_KEYS, USER_LOGINS_REJECTED)

# The reference DDL: created only when the table is missing (compose_probe prints it for the stand-in image).
USER_LOGINS_DDL = USER_LOGINS.create

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
    for name, column in (("ips", "masked_ip"), ("devices", "masked_device_id"))  # the public view names
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
