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

if TYPE_CHECKING:  # pandas loads where a batch is masked, not when Dagster loads the definitions
    import pandas as pd

MASKED_LOGINS = AssetKey("masked_logins")
TOKEN_PREVIEW_CHARS = 12

# Every column of user_logins: the reference DDL's seven, then what fetch-etl's migration adds.
USER_LOGINS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("user_id", "character varying(128)", "The user who logged in, as sent."),
    ("device_type", "character varying(32)", "Device type as sent (android, ios, ...)."),
    ("masked_ip", "character varying(256)", "Keyed token of the canonical IP address; equal IPs, equal tokens."),
    ("masked_device_id", "character varying(256)", "Keyed token of the device id; equal ids, equal tokens."),
    ("locale", "character varying(32)", "Locale as sent; NULL when absent or null."),
    ("app_version", "integer", "major·1,000,000 + minor·1,000 + patch: distinct versions never collide."),
    ("create_date", "date", "UTC date of the message's SQS SentTimestamp (the body has no timestamp)."),
    ("message_id", "text", "SQS MessageId: the idempotency key (unique); NULL only on legacy rows."),
    ("app_version_raw", "text", "app_version exactly as sent, e.g. 2.3.0, 0.96 or 3.7."),
    ("loaded_at", "timestamp with time zone", "When fetch-etl's load transaction inserted the row."),
    ("mask_key_id", "text", "Short fingerprint of the masking key that made the tokens (never the key)."),
)
COLUMN_DESCRIPTIONS: dict[str, str] = {name: description for name, _, description in USER_LOGINS_COLUMNS}

# The masked_logins DataFrame: LOGIN_COLUMNS plus the per-message verdict.
BATCH_COLUMN_DESCRIPTIONS: dict[str, str] = {
    **{name: COLUMN_DESCRIPTIONS[name] for name in LOGIN_COLUMNS},
    "status": "loadable or rejected (evaluated now), or already_loaded, already_dead_lettered or "
    "awaiting_dead_letter (decided by what is stored).",
    "reason_code": "Why a message was rejected (e.g. invalid_json); NULL when loadable.",
    "reason": "A readable sentence saying why; never quotes a field value.",
    "received_at": "When this run received the batch.",
    "sent_at": "SQS's SentTimestamp of the original message (kept by dead letters and redrives).",
    "redriven_at": "When `fetch-etl redrive` sent this copy; NULL for a plain message.",
}

TABLE_PREVIEW_COLUMNS: tuple[str, ...] = (
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version_raw",
    "create_date",
    "loaded_at",
)
SHORTENED_COLUMNS = frozenset({"masked_ip", "masked_device_id"})


def user_logins_schema(live_columns: Sequence[tuple[str, str]] = ()) -> TableSchema:
    """The table's schema: as Postgres reports it when given, else as fetch-etl creates it."""
    columns = live_columns or [(name, sql_type) for name, sql_type, _ in USER_LOGINS_COLUMNS]
    return TableSchema(
        columns=[TableColumn(name, sql_type, description=COLUMN_DESCRIPTIONS.get(name)) for name, sql_type in columns]
    )


def _frame_type(dtype: Any) -> str:
    return {"object": "string", "Int64": "integer"}.get(str(dtype), str(dtype))


def masked_logins_schema(frame: pd.DataFrame) -> TableSchema:
    """The batch frame's columns, with the dtype pandas holds them in."""
    return TableSchema(
        columns=[
            TableColumn(str(name), _frame_type(frame[name].dtype), description=BATCH_COLUMN_DESCRIPTIONS.get(str(name)))
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
    """A markdown table of a few rows: masked columns only (the caller selects them), tokens shortened."""
    if not rows:
        return empty
    import pandas as pd

    columns = [c for c in TABLE_PREVIEW_COLUMNS if c in rows[0]]
    frame = pd.DataFrame([{c: _cell(c, row.get(c)) for c in columns} for row in rows], columns=columns)
    return frame.to_markdown(index=False)


def rate(count: int, seconds: float) -> float:
    """Messages per second, rounded; 0 when no time passed."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
