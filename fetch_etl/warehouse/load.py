"""The Postgres side: the one-transaction idempotent load.

The schema and its migration live in `schema.py`, the masking-key registry in `key_registry.py`; their
entry points are imported here too, where the callers have always found them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.sql

from fetch_etl.warehouse.key_registry import check_mask_key as check_mask_key
from fetch_etl.warehouse.key_registry import retire_mask_key as retire_mask_key
from fetch_etl.warehouse.schema import USER_LOGINS, USER_LOGINS_REJECTED, Column
from fetch_etl.warehouse.schema import USER_LOGINS_DDL as USER_LOGINS_DDL
from fetch_etl.warehouse.schema import migrate as migrate

if TYPE_CHECKING:  # pandas loads where a run's messages are masked, not when Dagster loads the definitions
    import pandas as pd

# Everything below is derived from the table specs in schema.py: a column is added there, not here.
LOGIN_COLUMNS: tuple[str, ...] = USER_LOGINS.written  # the frame's columns the load COPYs (not loaded_at)
REJECT_COLUMNS: tuple[str, ...] = USER_LOGINS_REJECTED.written  # not the ack path's dead_letter* columns


def _array_type(column: Column) -> str:
    """The array a column's values are sent as: its own type, but varchar(n) as text, so an over-long value
    fails the INSERT (assignment cast) instead of being cut short by an explicit ::varchar(n)[] cast."""
    return "text" if column.sql_type.startswith("varchar") else column.sql_type


_REJECT_TYPES = {c.name: _array_type(c) for c in USER_LOGINS_REJECTED.columns if _array_type(c) != "text"}

_STAGE_DDL = (
    "\nCREATE TEMP TABLE fetch_etl_stage (\n    "
    + ", ".join(f"{name} {USER_LOGINS.column(name).sql_type}" for name in LOGIN_COLUMNS)
    + "\n) ON COMMIT DROP"
)


@dataclass(frozen=True)
class LoadResult:
    """What one load transaction did."""

    staged: int
    inserted: int
    rejects_recorded: int
    # Rejected keys whose login is stored already (another run loaded it first): acknowledged, not recorded.
    superseded: list[str] = field(default_factory=list)
    path: str = "none"  # "copy" (straight into the table), "merge" (temp table + ON CONFLICT) or "none"
    loaded_at: datetime | None = None  # user_logins.loaded_at of every row this load inserted

    @property
    def already_present(self) -> int:
        return self.staged - self.inserted


def column_values(frame: pd.DataFrame, columns: Sequence[str]) -> list[list[Any]]:
    """Each column as a list of Python scalars (tolist()), missing values as None: one array per column."""
    values = []
    for column in columns:
        series = frame[column]
        cells = series.tolist()
        missing = series.isna()
        if missing.any():  # pandas NaN / NA / NaT -> SQL NULL
            cells = [None if gone else cell for cell, gone in zip(cells, missing.tolist(), strict=True)]
        values.append(cells)
    return values


def rows_for_copy(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows as Python tuples for COPY, converted column by column."""
    return list(zip(*column_values(frame, columns), strict=True))


def _copy(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert_logins(cur: psycopg.Cursor[Any], logins: pd.DataFrame, loaded_at: datetime) -> tuple[int, str]:
    """Insert the run's logins that are not in the table yet; returns (inserted, path).

    Fast path "copy": COPY straight into `user_logins` inside a savepoint, `loaded_at` = the transaction's
    now(). If any MessageId is already there (a redelivery after a crash, or a concurrent run holding the
    same message), the unique index refuses the COPY, the savepoint undoes it, and the "merge" path runs:
    COPY into a temp table, then INSERT ... ON CONFLICT (message_id) DO NOTHING.
    """
    rows = rows_for_copy(logins, LOGIN_COLUMNS)
    try:
        with cur.connection.transaction():
            _copy(cur, "user_logins", (*LOGIN_COLUMNS, "loaded_at"), ((*r, loaded_at) for r in rows))
        return len(rows), "copy"
    except psycopg.errors.UniqueViolation:
        pass
    cur.execute(_STAGE_DDL)
    _copy(cur, "fetch_etl_stage", LOGIN_COLUMNS, rows)
    columns = ", ".join(LOGIN_COLUMNS)
    cur.execute(
        f"INSERT INTO user_logins ({columns}, loaded_at) SELECT {columns}, now() FROM fetch_etl_stage "
        "ON CONFLICT (message_id) DO NOTHING"
    )
    return cur.rowcount, "merge"


def load_run(conn: psycopg.Connection, logins: pd.DataFrame, rejects: pd.DataFrame) -> LoadResult:
    """In ONE transaction: insert the new logins (COPY; merge on redelivery), record the rejects, and mark
    the rejects rows of redriven messages that now load."""
    unique_logins = logins.drop_duplicates("message_id")  # SQS may hand one message out twice in a run
    unique_rejects = rejects.drop_duplicates("message_id")
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute("SELECT now()").fetchone()  # the transaction's time: every row of this load gets it
        loaded_at: datetime = row[0] if row else datetime.now(UTC)
        inserted, path = _insert_logins(cur, unique_logins, loaded_at) if len(unique_logins) else (0, "none")
        recorded, superseded = _record_rejects(cur, unique_rejects) if len(unique_rejects) else (0, [])
        _mark_redriven(cur, unique_logins)
    return LoadResult(
        staged=len(logins),
        inserted=inserted,
        rejects_recorded=recorded,
        superseded=superseded,
        path=path,
        loaded_at=loaded_at,
    )


def _unnest(columns: Sequence[str], types: dict[str, str]) -> str:
    """`unnest(%s::text[], …) AS v(columns…)`: one array per column as the rows of one set-based statement."""
    arrays = ", ".join(f"%s::{types.get(column, 'text')}[]" for column in columns)
    return f"unnest({arrays}) AS v({', '.join(columns)})"


def _record_rejects(cur: psycopg.Cursor[Any], rejects: pd.DataFrame) -> tuple[int, list[str]]:
    """Record rejects; returns (rows written, keys superseded by a stored login).

    A stored login always wins: a reject is not recorded for a key that is in `user_logins`. A reject
    already recorded stays as it was, unless this is a new redrive of it (another `redriven_at`): then it
    is evaluated afresh, so its row is replaced and it awaits its dead-letter copy again.
    """
    columns = ", ".join(REJECT_COLUMNS)
    fresh = ", ".join(f"{c} = EXCLUDED.{c}" for c in REJECT_COLUMNS if c != "message_id")
    cur.execute(
        f"""
        INSERT INTO user_logins_rejected ({columns})
        SELECT {columns} FROM {_unnest(REJECT_COLUMNS, _REJECT_TYPES)}
        WHERE NOT EXISTS (SELECT 1 FROM user_logins l WHERE l.message_id = v.message_id)
        ON CONFLICT (message_id) DO UPDATE SET {fresh}, dead_lettered_at = NULL, dead_letter_error = NULL
        WHERE EXCLUDED.redriven_at IS NOT NULL
          AND EXCLUDED.redriven_at IS DISTINCT FROM user_logins_rejected.redriven_at""",
        column_values(rejects, REJECT_COLUMNS),
    )
    recorded = max(cur.rowcount, 0)
    cur.execute("SELECT message_id FROM user_logins WHERE message_id = ANY(%s)", (rejects["message_id"].tolist(),))
    return recorded, [str(r[0]) for r in cur.fetchall()]


def _mark_redriven(cur: psycopg.Cursor[Any], logins: pd.DataFrame) -> None:
    """A redriven message that now loads: its rejects row records the redrive that resolved it."""
    redriven = logins[logins["redriven_at"].notna()] if "redriven_at" in logins else logins.iloc[0:0]
    if not len(redriven):
        return
    cur.execute(
        f"""
        UPDATE user_logins_rejected r SET redriven_at = v.redriven_at
        FROM {_unnest(("message_id", "redriven_at"), _REJECT_TYPES)}
        WHERE r.message_id = v.message_id""",
        column_values(redriven, ("message_id", "redriven_at")),
    )


def varchar_counts_bytes(conn: psycopg.Connection) -> bool:
    """True on a SQL_ASCII server, where varchar(n) limits bytes rather than characters."""
    row = conn.execute("SHOW server_encoding").fetchone()
    return bool(row) and str(row[0]).upper() == "SQL_ASCII"


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """What is already stored for a message key: the one source of truth for deciding what to do with it."""

    loaded: bool
    rejected: bool
    dead_lettered: bool
    redriven_at: datetime | None


def stored_outcomes(conn: psycopg.Connection, keys: Sequence[str]) -> dict[str, StoredOutcome]:
    """The stored outcome of each key that has one (a login, a reject, or both after a redrive)."""
    if not keys:
        return {}
    rows = conn.execute(
        """
        SELECT k.id, l.message_id IS NOT NULL, r.message_id IS NOT NULL, r.dead_lettered_at IS NOT NULL,
               r.redriven_at
        FROM unnest(%s::text[]) AS k(id)
        LEFT JOIN user_logins l ON l.message_id = k.id
        LEFT JOIN user_logins_rejected r ON r.message_id = k.id
        WHERE l.message_id IS NOT NULL OR r.message_id IS NOT NULL""",
        (list(dict.fromkeys(keys)),),
    ).fetchall()
    return {str(key): StoredOutcome(bool(ld), bool(rj), bool(dl), redriven) for key, ld, rj, dl, redriven in rows}


@dataclass(frozen=True, slots=True)
class ClaimedReject:
    message_id: str
    reason_code: str
    reason: str
    dead_lettered: bool


def claim_rejects(cur: psycopg.Cursor[Any], keys: Sequence[str]) -> list[ClaimedReject]:
    """Lock the rejects rows of `keys` for this transaction, skipping rows another run holds.

    The run that holds a row is the one that forwards it: one dead-letter copy per reject, however many
    runs hold the message. A skipped row's message is left on the queue and handled when redelivered.
    """
    if not keys:
        return []
    rows = cur.execute(
        "SELECT message_id, reason_code, reason, dead_lettered_at IS NOT NULL FROM user_logins_rejected "
        "WHERE message_id = ANY(%s) FOR UPDATE SKIP LOCKED",
        (list(dict.fromkeys(keys)),),
    ).fetchall()
    return [ClaimedReject(str(mid), str(code), str(reason), bool(done)) for mid, code, reason, done in rows]


def record_forwarding(cur: psycopg.Cursor[Any], forwarded: Sequence[str], failed: dict[str, str]) -> None:
    """Remember which claimed rejects reached the dead-letter queue, and why the others did not."""
    if forwarded:
        cur.execute(
            "UPDATE user_logins_rejected SET dead_lettered_at = now(), dead_letter_error = NULL "
            "WHERE message_id = ANY(%s)",
            (list(forwarded),),
        )
    if failed:
        cur.execute(
            f"""
            UPDATE user_logins_rejected r SET dead_letter_error = v.error
            FROM {_unnest(("message_id", "error"), {})}
            WHERE r.message_id = v.message_id""",
            (list(failed), list(failed.values())),
        )


def table_row_count(conn: psycopg.Connection, table: str = "user_logins") -> int:
    """Rows in a fetch-etl table (for dagster/row_count)."""
    with conn.cursor() as cur:
        cur.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table)))
        row = cur.fetchone()
    return int(row[0]) if row else 0
