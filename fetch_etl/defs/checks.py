"""Asset checks on `user_logins`, shown in the UI beside the asset.

They run after every ingest (the `ingest_logins` job selects the group, checks included) and on their
own from the UI: each reads Postgres, the DLQ or the Dagster instance, never the run's in-memory messages. In an
ingest run the table checks read only the rows that run loaded (indexed on loaded_at), so their cost
follows the run, not the table; run on their own they read the whole table.
The rules are the pure functions below; the checks only fetch numbers and call them.
"""

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from fetch_etl.logins import masking
from fetch_etl.logins.masking import TOKEN_SHAPES, TokenShape
from fetch_etl.queue import probes as queue_probes
from fetch_etl.queue.messages import QueueError
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse import probes
from fetch_etl.warehouse.resource import PostgresResource

USER_LOGINS = AssetKey("user_logins")  # the asset these checks watch (defined in assets.py)

REJECT_RATE_ENV = "REJECT_RATE_WARN_THRESHOLD"
DEFAULT_REJECT_RATE_THRESHOLD = 0.05
NOT_LOADED_YET = (
    "user_logins has not been loaded by fetch-etl yet (no table, or no message_id column): "
    "materialize the logins group first"
)


# --- token shapes: each masker owns its shape (logins/masking.py); the check reads them -----------------


def accepted_shapes(modes: tuple[str, ...] | None = None) -> dict[str, TokenShape]:
    """The shapes of the modes fetch_etl.logins.masking offers now (a mode without a known shape accepts nothing)."""
    return {mode: TOKEN_SHAPES[mode] for mode in (modes or masking.MASKING_MODES) if mode in TOKEN_SHAPES}


def shape_mode(token: str, shapes: Mapping[str, TokenShape] | None = None) -> str | None:
    """The mode whose whole shape (each masker's `shape`, logins/masking.py) `token` has, or None."""
    for mode, shape in (shapes if shapes is not None else accepted_shapes()).items():
        if shape.matches(token):
            return mode
    return None


# --- the reject rate ------------------------------------------------------------------------


def reject_rate_threshold(environ: Mapping[str, str] = os.environ) -> float:
    """REJECT_RATE_WARN_THRESHOLD as a share between 0 and 1 (default 0.05)."""
    raw = environ.get(REJECT_RATE_ENV, "").strip()
    if not raw:
        return DEFAULT_REJECT_RATE_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{REJECT_RATE_ENV} must be a share between 0 and 1, e.g. 0.05 for 5%; got {raw!r}")
    return value


def judge_reject_rate(received: int, rejected: int, threshold: float) -> tuple[bool, float, str]:
    """(passed, rate, sentence): passes while rejected/received stays at or under the threshold."""
    if received == 0:
        return True, 0.0, "the last run received no messages"
    share = rejected / received
    verdict = "at or under" if share <= threshold else "above"
    sentence = f"{rejected} of {received} messages rejected ({share:.1%}), {verdict} the threshold of {threshold:.1%}"
    return share <= threshold, round(share, 4), sentence


def messages(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"


def _int(metadata: Mapping[str, Any], key: str) -> int:
    value = metadata.get(key)
    return int(getattr(value, "value", value) or 0)


# --- the checks -------------------------------------------------------------------------------


def run_scope(context: AssetCheckExecutionContext) -> tuple[datetime | None, str]:
    """Which rows a table check reads: the rows this run loaded when the check runs in the ingest run that
    materialized user_logins (per-run cost stays flat as the table grows), else the whole table (a check
    run on its own, from the UI or a checks-only job)."""
    event = context.instance.get_latest_materialization_event(USER_LOGINS)
    if event is not None and event.run_id == context.run.run_id and event.asset_materialization is not None:
        loaded_at = event.asset_materialization.metadata.get("loaded_at")
        text = getattr(loaded_at, "value", loaded_at)
        if isinstance(text, str) and text:
            return datetime.fromisoformat(text), f"rows of this run's load (loaded_at = {text})"
    return None, "whole table (rows loaded by fetch-etl)"


@asset_check(
    asset=USER_LOGINS,
    description=(
        "No row loaded by fetch-etl has a NULL masked_ip, masked_device_id, user_id or app_version. "
        "Rows without a message_id (legacy rows of a pre-existing reference table) are not checked."
    ),
    blocking=False,
)
def required_columns_not_null(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    loaded_at, scope = run_scope(context)
    with postgres.connect() as conn:
        if not probes.loaded_by_fetch_etl(conn):
            return AssetCheckResult(passed=False, description=NOT_LOADED_YET)
        rows, nulls = probes.null_counts(conn, loaded_at)
    bad = {column: n for column, n in nulls.items() if n}
    return AssetCheckResult(
        passed=not bad,
        description=f"NULLs in {', '.join(f'{c} ({n})' for c, n in bad.items())}" if bad else None,
        metadata={"rows_checked": rows, "null_counts": MetadataValue.json(nulls), "scope": scope},
    )


@asset_check(
    asset=USER_LOGINS,
    description="No SQS MessageId occurs twice in user_logins (the idempotency key; backed by a unique index).",
    blocking=False,
)
def message_id_unique(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    loaded_at, scope = run_scope(context)
    with postgres.connect() as conn:
        if not probes.loaded_by_fetch_etl(conn):
            return AssetCheckResult(passed=False, description=NOT_LOADED_YET)
        dupes = probes.duplicate_message_ids(conn, loaded_at=loaded_at)
    return AssetCheckResult(
        passed=dupes.message_ids == 0,
        description=(
            f"{dupes.message_ids} MessageIds occur more than once ({dupes.extra_rows} extra rows)"
            if dupes.message_ids
            else None
        ),
        metadata={
            "duplicated_message_ids": dupes.message_ids,
            "extra_rows": dupes.extra_rows,
            "examples": MetadataValue.json(dupes.examples),
            "unique_index_present": dupes.unique_index,
            "scope": scope,
        },
    )


@asset_check(
    asset=USER_LOGINS,
    description=(
        "Every masked_ip and masked_device_id loaded by fetch-etl has the shape a masking mode produces "
        "(hmac: 64 lowercase hex digits; siv: 's1.' + URL-safe base64). Legacy rows are not checked."
    ),
    blocking=False,
)
def tokens_well_formed(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    shapes = accepted_shapes()
    loaded_at, scope = run_scope(context)
    with postgres.connect() as conn:
        if not probes.loaded_by_fetch_etl(conn):
            return AssetCheckResult(passed=False, description=NOT_LOADED_YET)
        counts = probes.token_shape_counts(conn, {mode: shape.sql() for mode, shape in shapes.items()}, loaded_at)
    unknown = [mode for mode in masking.MASKING_MODES if mode not in TOKEN_SHAPES]
    bad = {column: n for column, n in counts.malformed.items() if n}
    problems = [f"{n} {column} tokens have no known shape" for column, n in bad.items()]
    if unknown:
        problems.append(f"no token shape is known for mode(s) {', '.join(unknown)}: give their masker a shape")
    return AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={
            "malformed_tokens": MetadataValue.json(counts.malformed),
            "tokens_by_mode": MetadataValue.json(counts.by_mode),
            "accepted_shapes": MetadataValue.json({m: s.description for m, s in shapes.items()}),
            "example_message_ids": MetadataValue.json(counts.examples),
            "scope": scope,
        },
    )


@asset_check(
    asset=USER_LOGINS,
    description=(
        "The share of rejected messages in the latest user_logins materialization stays at or under "
        f"{REJECT_RATE_ENV} (default {DEFAULT_REJECT_RATE_THRESHOLD:.0%}). A warning, not an error."
    ),
    blocking=False,
)
def reject_rate_below_threshold(context: AssetCheckExecutionContext) -> AssetCheckResult:
    threshold = reject_rate_threshold()
    event = context.instance.get_latest_materialization_event(USER_LOGINS)
    if event is None or event.asset_materialization is None:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.WARN,
            description="user_logins has no materialization yet",
            metadata={"threshold": threshold},
        )
    metadata = event.asset_materialization.metadata
    received, rejected = _int(metadata, "received"), _int(metadata, "rejected")
    passed, share, sentence = judge_reject_rate(received, rejected, threshold)
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=sentence,
        metadata={
            "received": received,
            "rejected": rejected,
            "reject_rate": share,
            "threshold": threshold,
            "run_id": event.run_id,
        },
    )


@asset_check(
    asset=USER_LOGINS,
    description=(
        "Reports how many messages wait in the dead-letter queue (rejects keep their reason as a message "
        "attribute). Warns only when the DLQ cannot be read."
    ),
    blocking=False,
)
def dead_letter_queue_depth(sqs: SqsResource) -> AssetCheckResult:
    try:
        url, depth = queue_probes.dlq_depth(sqs)
    except QueueError as err:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, description=str(err))
    total = depth.visible + depth.in_flight + depth.delayed
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.WARN,
        description=f"{messages(total)} in the dead-letter queue" if url else "no dead-letter queue exists yet",
        metadata={
            "dlq_url": url or "",
            "dlq_visible": depth.visible,
            "dlq_in_flight": depth.in_flight,
            "dlq_delayed": depth.delayed,
        },
    )


USER_LOGINS_CHECKS = [
    required_columns_not_null,
    message_id_unique,
    tokens_well_formed,
    reject_rate_below_threshold,
    dead_letter_queue_depth,
]
