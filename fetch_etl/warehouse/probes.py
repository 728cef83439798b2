"""Read-only probes of the warehouse, shared by the asset checks, the `user_logins` metadata and
`fetch-etl status`, so all three report the same numbers (the queues' probes are in queue/probes.py).

Nothing here writes: a check or a status call must never create a table. Every query
returns counts, tokens or MessageIds only, never a clear IP or device id (the warehouse holds none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from fetch_etl.warehouse.schema import USER_LOGINS

# Rows that fetch-etl loaded itself; a pre-existing reference table may hold legacy rows without one.
LOADED_BY_FETCH_ETL = "message_id IS NOT NULL"
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c.name for c in USER_LOGINS.columns if c.required)
TOKEN_COLUMNS: tuple[str, ...] = tuple(c.name for c in USER_LOGINS.columns if c.token)


def table_columns(conn: psycopg.Connection, table: str = "user_logins") -> list[tuple[str, str]]:
    """(column, SQL type) of a table in the connection's search path, in table order; [] when it is missing."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum""",
        (table,),
    ).fetchall()
    return [(str(name), str(sql_type)) for name, sql_type in rows]


def loaded_by_fetch_etl(conn: psycopg.Connection) -> bool:
    """True when user_logins exists and has fetch-etl's idempotency key (its migration has run)."""
    return "message_id" in dict(table_columns(conn))


def _scope(loaded_at: datetime | None) -> tuple[str, list[Any]]:
    """WHERE clause for fetch-etl's rows: all of them, or only those of one load (`loaded_at` is indexed)."""
    if loaded_at is None:
        return LOADED_BY_FETCH_ETL, []
    return f"{LOADED_BY_FETCH_ETL} AND loaded_at = %s", [loaded_at]


def null_counts(conn: psycopg.Connection, loaded_at: datetime | None = None) -> tuple[int, dict[str, int]]:
    """(rows loaded by fetch-etl, {required column: rows where it is NULL}); one load's rows with `loaded_at`."""
    where, params = _scope(loaded_at)
    nulls = ", ".join(f"count(*) FILTER (WHERE {column} IS NULL)" for column in REQUIRED_COLUMNS)
    row = conn.execute(f"SELECT count(*), {nulls} FROM user_logins WHERE {where}", params).fetchone()
    assert row is not None
    return int(row[0]), {column: int(n) for column, n in zip(REQUIRED_COLUMNS, row[1:], strict=True)}


@dataclass(frozen=True)
class DuplicateIds:
    message_ids: int  # MessageIds that occur more than once
    extra_rows: int  # rows beyond the first of each
    examples: list[str]  # a few of those MessageIds (SQS ids, no personal data)
    unique_index: bool  # whether the unique index that prevents them exists


def duplicate_message_ids(
    conn: psycopg.Connection, examples: int = 5, loaded_at: datetime | None = None
) -> DuplicateIds:
    """MessageIds stored more than once: in the whole table, or those of one load (probed through the index)."""
    where, params = _scope(loaded_at)
    rows = conn.execute(
        f"""
        SELECT message_id, count(*) FROM user_logins
        WHERE message_id IN (SELECT message_id FROM user_logins WHERE {where})
        GROUP BY message_id HAVING count(*) > 1 ORDER BY count(*) DESC, message_id"""
        if loaded_at is not None
        else f"""
        SELECT message_id, count(*) FROM user_logins WHERE {where}
        GROUP BY message_id HAVING count(*) > 1 ORDER BY count(*) DESC, message_id""",
        params,
    ).fetchall()
    index = conn.execute(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass('user_logins') AND i.indisunique AND i.indnatts = 1
              AND a.attname = 'message_id')"""
    ).fetchone()
    return DuplicateIds(
        message_ids=len(rows),
        extra_rows=sum(int(n) - 1 for _, n in rows),
        examples=[str(mid) for mid, _ in rows[:examples]],
        unique_index=bool(index and index[0]),
    )


@dataclass(frozen=True)
class TokenShapeCounts:
    malformed: dict[str, int]  # token column -> non-NULL tokens matching no known shape
    by_mode: dict[str, int]  # mode -> tokens (both columns) of that mode's shape
    examples: list[str]  # a few MessageIds of rows with a malformed token


def token_shape_counts(
    conn: psycopg.Connection, shapes: Mapping[str, tuple[str, int, int]], loaded_at: datetime | None = None
) -> TokenShapeCounts:
    """Count tokens by the shape they have, in one scan; `shapes` maps a mode to (regular expression in the
    syntax both Python and PostgreSQL's `~` understand, shortest length, longest length).

    Each column's mode is worked out once per row (a CASE over the shapes), and lengths are compared
    apart from the regex: PostgreSQL's regex engine is slow on counted repeats such as `{64}`.
    """
    where, scope_params = _scope(loaded_at)
    modes = list(shapes)
    case_params: list[Any] = []
    cases = []
    for column in TOKEN_COLUMNS:
        whens = " ".join(f"WHEN char_length({column}) BETWEEN %s AND %s AND {column} ~ %s THEN %s" for _ in modes)
        cases.append(f"CASE WHEN {column} IS NULL THEN '' {whens} END AS {column}_mode")
        for mode in modes:
            pattern, shortest, longest = shapes[mode]
            case_params += [shortest, longest, pattern, mode]
    per_row = f"SELECT message_id, {', '.join(cases)} FROM user_logins WHERE {where}"
    malformed = [f"count(*) FILTER (WHERE {column}_mode IS NULL)" for column in TOKEN_COLUMNS]
    per_mode = [" + ".join(f"count(*) FILTER (WHERE {column}_mode = %s)" for column in TOKEN_COLUMNS) for _ in modes]
    mode_params = [mode for mode in modes for _ in TOKEN_COLUMNS]
    row = conn.execute(
        f"SELECT {', '.join([*malformed, *per_mode])} FROM ({per_row}) AS shaped",
        [*mode_params, *case_params, *scope_params],  # in the order the placeholders appear
    ).fetchone()
    assert row is not None
    counts = [int(n) for n in row]
    examples: list[str] = []
    if any(counts[: len(TOKEN_COLUMNS)]):  # only then: a second scan for a few MessageIds
        any_bad = " OR ".join(f"{column}_mode IS NULL" for column in TOKEN_COLUMNS)
        found = conn.execute(
            f"SELECT message_id FROM ({per_row}) AS shaped WHERE {any_bad} ORDER BY message_id LIMIT 5",
            [*case_params, *scope_params],
        ).fetchall()
        examples = [str(r[0]) for r in found]
    return TokenShapeCounts(
        malformed=dict(zip(TOKEN_COLUMNS, counts[: len(TOKEN_COLUMNS)], strict=True)),
        by_mode=dict(zip(modes, counts[len(TOKEN_COLUMNS) :], strict=True)),
        examples=examples,
    )


def newest_rows(conn: psycopg.Connection, columns: Sequence[str], limit: int = 5) -> list[dict[str, Any]]:
    """The most recently loaded rows (fetch-etl's own), `columns` only."""
    available = {name for name, _ in table_columns(conn)}
    selected = [c for c in columns if c in available]
    if "loaded_at" not in available or not selected:
        return []
    cursor = conn.execute(
        f"SELECT {', '.join(selected)} FROM user_logins WHERE {LOADED_BY_FETCH_ETL} AND loaded_at IS NOT NULL "
        "ORDER BY loaded_at DESC, message_id LIMIT %s",  # walks the loaded_at index backwards: no full sort
        (limit,),
    )
    return [dict(zip(selected, row, strict=True)) for row in cursor.fetchall()]


def rejects_by_reason(conn: psycopg.Connection) -> dict[str, int]:
    """All recorded rejections, by reason code (empty when nothing was ever rejected)."""
    if not table_columns(conn, "user_logins_rejected"):
        return {}
    rows = conn.execute(
        "SELECT reason_code, count(*) FROM user_logins_rejected GROUP BY reason_code ORDER BY count(*) DESC, 1"
    ).fetchall()
    return {str(code): int(n) for code, n in rows}


@dataclass(frozen=True)
class WarehouseOverview:
    """What an operator wants to know about the table at a glance."""

    exists: bool
    rows: int = 0
    duplicate_ip_tokens: int = 0
    duplicate_device_tokens: int = 0
    rejects_by_reason: dict[str, int] | None = None
    newest_loaded_at: datetime | None = None
    undelivered: UndeliveredRejects | None = None


@dataclass(frozen=True)
class UndeliveredRejects:
    """Recorded rejects the dead-letter queue refused: they wait on the source queue (docs/reliability.md)."""

    count: int
    by_error: dict[str, int]
    oldest_sent_at: datetime | None  # SentTimestamp of the oldest (received_at where it predates sent_at)


def undelivered_rejects(conn: psycopg.Connection) -> UndeliveredRejects:
    if "dead_letter_error" not in dict(table_columns(conn, "user_logins_rejected")):
        return UndeliveredRejects(0, {}, None)
    rows = conn.execute(
        """
        SELECT dead_letter_error, count(*), min(coalesce(sent_at, received_at)) FROM user_logins_rejected
        WHERE dead_lettered_at IS NULL AND dead_letter_error IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1"""
    ).fetchall()
    oldest = min((row[2] for row in rows if row[2] is not None), default=None)
    return UndeliveredRejects(sum(int(r[1]) for r in rows), {str(r[0]): int(r[1]) for r in rows}, oldest)


def warehouse_overview(conn: psycopg.Connection) -> WarehouseOverview:
    if not loaded_by_fetch_etl(conn):
        return WarehouseOverview(exists=False, rejects_by_reason=rejects_by_reason(conn))
    undelivered = undelivered_rejects(conn)
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM user_logins),
               (SELECT count(*) FROM user_logins_duplicate_ips),
               (SELECT count(*) FROM user_logins_duplicate_devices),
               (SELECT max(loaded_at) FROM user_logins)"""
    ).fetchone()
    assert row is not None
    return WarehouseOverview(
        exists=True,
        rows=int(row[0]),
        duplicate_ip_tokens=int(row[1]),
        duplicate_device_tokens=int(row[2]),
        rejects_by_reason=rejects_by_reason(conn),
        newest_loaded_at=row[3],
        undelivered=undelivered,
    )


def recorded_rejects(conn: psycopg.Connection, keys: Sequence[str]) -> set[str]:
    """Which of `keys` (original MessageIds) have a row in user_logins_rejected (none when it is missing)."""
    if not keys or not table_columns(conn, "user_logins_rejected"):
        return set()
    rows = conn.execute("SELECT message_id FROM user_logins_rejected WHERE message_id = ANY(%s)", (list(keys),))
    return {str(row[0]) for row in rows.fetchall()}
