"""The Postgres side: the one-transaction idempotent load.

The schema and its migration live in `schema.py`, the masking-key registry in `key_registry.py`; their
entry points are imported here too, where the callers have always found them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import psycopg
import psycopg.sql

from fetch_etl.key_registry import check_mask_key as check_mask_key
from fetch_etl.key_registry import retire_mask_key as retire_mask_key
from fetch_etl.schema import USER_LOGINS_DDL as USER_LOGINS_DDL
from fetch_etl.schema import migrate as migrate

LOGIN_COLUMNS: tuple[str, ...] = (
    "message_id",
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "app_version_raw",
    "create_date",
    "mask_key_id",
)
REJECT_COLUMNS: tuple[str, ...] = (
    "message_id",
    "reason_code",
    "reason",
    "received_at",
    "masked_ip",
    "masked_device_id",
    "mask_key_id",
)

_STAGE_DDL = """
CREATE TEMP TABLE fetch_etl_stage (
    message_id text, user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, app_version_raw text,
    create_date date, mask_key_id text
) ON COMMIT DROP"""


@dataclass(frozen=True)
class LoadResult:
    """What one load transaction did."""

    staged: int
    inserted: int
    rejects_recorded: int
    # Rejected MessageIds of this batch not yet in the dead-letter queue / already there.
    to_dead_letter: list[str] = field(default_factory=list)
    already_dead_lettered: list[str] = field(default_factory=list)
    path: str = "none"  # "copy" (straight into the table), "merge" (temp table + ON CONFLICT) or "none"
    loaded_at: datetime | None = None  # user_logins.loaded_at of every row this load inserted

    @property
    def already_present(self) -> int:
        return self.staged - self.inserted


def rows_for_copy(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows as Python tuples for COPY: column by column (tolist() gives Python scalars), missing values as None."""
    values = []
    for column in columns:
        series = frame[column]
        cells = series.tolist()
        missing = series.isna()
        if missing.any():  # pandas NaN / NA / NaT -> SQL NULL
            cells = [None if gone else cell for cell, gone in zip(cells, missing.tolist(), strict=True)]
        values.append(cells)
    return list(zip(*values, strict=True))


def _copy(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert_logins(cur: psycopg.Cursor[Any], logins: pd.DataFrame, loaded_at: datetime) -> tuple[int, str]:
    """Insert the batch's logins that are not in the table yet; returns (inserted, path).

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


def load_batch(conn: psycopg.Connection, logins: pd.DataFrame, rejects: pd.DataFrame) -> LoadResult:
    """In ONE transaction: insert the new logins (COPY; merge on redelivery) and record rejects."""
    reject_ids = rejects["message_id"].tolist() if len(rejects) else []
    unique_logins = logins.drop_duplicates("message_id")  # SQS may hand one message out twice in a batch
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute("SELECT now()").fetchone()  # the transaction's time: every row of this load gets it
        loaded_at: datetime = row[0] if row else datetime.now(UTC)
        inserted, path = _insert_logins(cur, unique_logins, loaded_at) if len(unique_logins) else (0, "none")
        recorded = 0
        to_dead_letter: list[str] = []
        already: list[str] = []
        if reject_ids:
            cur.executemany(
                f"INSERT INTO user_logins_rejected ({', '.join(REJECT_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(REJECT_COLUMNS))}) ON CONFLICT (message_id) DO NOTHING",
                rows_for_copy(rejects, REJECT_COLUMNS),
            )
            recorded = max(cur.rowcount, 0)
            cur.execute(
                "SELECT message_id, dead_lettered_at IS NOT NULL FROM user_logins_rejected WHERE message_id = ANY(%s)",
                (reject_ids,),
            )
            for message_id, done in cur.fetchall():
                (already if done else to_dead_letter).append(message_id)
    return LoadResult(
        staged=len(logins),
        inserted=inserted,
        rejects_recorded=recorded,
        to_dead_letter=to_dead_letter,
        already_dead_lettered=already,
        path=path,
        loaded_at=loaded_at,
    )


def mark_dead_lettered(conn: psycopg.Connection, message_ids: Sequence[str]) -> None:
    """Remember which rejects reached the DLQ, so a rerun does not forward them twice."""
    if not message_ids:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "UPDATE user_logins_rejected SET dead_lettered_at = now() "
            "WHERE message_id = ANY(%s) AND dead_lettered_at IS NULL",
            (list(message_ids),),
        )


def table_row_count(conn: psycopg.Connection, table: str = "user_logins") -> int:
    """Rows in a fetch-etl table (for dagster/row_count)."""
    with conn.cursor() as cur:
        cur.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table)))
        row = cur.fetchone()
    return int(row[0]) if row else 0
