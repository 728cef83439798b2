"""The metadata that lets the asset graph tell its own story: table schema, column lineage, a preview
of the newest rows, throughput. Pure functions; the assets only attach what these return.

Previews show masked columns only, with tokens shortened: no clear IP or device id ever reaches
Dagster's event log, and a shortened token is enough to see that duplicates line up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dagster import AssetKey, TableColumn, TableColumnDep, TableColumnLineage, TableSchema

from fetch_etl.warehouse.load import LOGIN_COLUMNS
from fetch_etl.warehouse.schema import USER_LOGINS

if TYPE_CHECKING:  # pandas loads where a run's messages are masked, not when Dagster loads the definitions
    import pandas as pd

MASKED_LOGINS = AssetKey("masked_logins")
TOKEN_PREVIEW_CHARS = 12

# The table's columns, types and descriptions come from its one spec (warehouse/schema.py).
COLUMN_DESCRIPTIONS: dict[str, str] = {c.name: c.description for c in USER_LOGINS.columns}

# The masked_logins DataFrame: LOGIN_COLUMNS plus the per-message verdict.
FRAME_COLUMN_DESCRIPTIONS: dict[str, str] = {
    **{name: COLUMN_DESCRIPTIONS[name] for name in LOGIN_COLUMNS},
    "status": "loadable or rejected (evaluated now), or already_loaded, already_dead_lettered or "
    "awaiting_dead_letter (decided by what is stored).",
    "reason_code": "Why a message was rejected (e.g. invalid_json); NULL when loadable.",
    "reason": "A readable sentence saying why; never quotes a field value.",
    "received_at": "When this run received the message.",
    "sent_at": "SQS's SentTimestamp of the original message (kept by dead letters and redrives).",
    "redriven_at": "When `fetch-etl redrive` sent this copy; NULL for a plain message.",
}

# Both previews (a run's masked_logins frame, user_logins' newest rows) show these columns, those of them
# the rows have (the frame has no loaded_at), with each token column shortened.
PREVIEW_COLUMNS: tuple[str, ...] = (
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version_raw",
    "create_date",
    "loaded_at",
)
SHORTENED_COLUMNS = frozenset(c.name for c in USER_LOGINS.columns if c.token)


def user_logins_schema(live_columns: Sequence[tuple[str, str]] = ()) -> TableSchema:
    """The table's schema: as Postgres reports it when given, else as fetch-etl creates it."""
    columns = live_columns or [(c.name, c.catalog_type) for c in USER_LOGINS.columns]
    return TableSchema(
        columns=[TableColumn(name, sql_type, description=COLUMN_DESCRIPTIONS.get(name)) for name, sql_type in columns]
    )


def _frame_type(dtype: Any) -> str:
    return {"object": "string", "Int64": "integer"}.get(str(dtype), str(dtype))


def masked_logins_schema(frame: pd.DataFrame) -> TableSchema:
    """The masked frame's columns, with the dtype pandas holds them in."""
    return TableSchema(
        columns=[
            TableColumn(str(name), _frame_type(frame[name].dtype), description=FRAME_COLUMN_DESCRIPTIONS.get(str(name)))
            for name in frame.columns
        ]
    )


def user_logins_lineage(table_columns: Iterable[str] = LOGIN_COLUMNS) -> TableColumnLineage:
    """Each loaded column comes from the masked_logins column of the same name (loaded_at is set by Postgres)."""
    return TableColumnLineage(
        deps_by_column={
            name: [TableColumnDep(asset_key=MASKED_LOGINS, column_name=name)]
            for name in table_columns
            if name in LOGIN_COLUMNS
        }
    )


def _cell(column: str, value: Any) -> Any:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if column in SHORTENED_COLUMNS:
        text = str(value)
        return f"{text[:TOKEN_PREVIEW_CHARS]}…" if len(text) > TOKEN_PREVIEW_CHARS else text
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


def rows_preview(rows: Sequence[Mapping[str, Any]], empty: str = "_no rows loaded yet_") -> str:
    """A markdown table of a few rows: the PREVIEW_COLUMNS they have (masked columns only), tokens shortened."""
    if not rows:
        return empty
    import pandas as pd

    columns = [c for c in PREVIEW_COLUMNS if c in rows[0]]
    frame = pd.DataFrame([{c: _cell(c, row.get(c)) for c in columns} for row in rows], columns=columns)
    return frame.to_markdown(index=False)


def rate(count: int, seconds: float) -> float:
    """Messages per second, rounded; 0 when no time passed."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
