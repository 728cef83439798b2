"""The lineage: raw_login_messages -> masked_logins -> user_logins.

Each asset is a few lines; the work lives in pure functions (records, masking, batch) and in the
resources. Messages leave the queue only after the Postgres commit that makes them safe.
"""

import time

import pandas as pd
from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)

from fetch_etl import batch
from fetch_etl.resources import PiiMaskingResource, PostgresResource, SqsResource
from fetch_etl.resources.sqs import QueueMessage
from fetch_etl.warehouse import load_batch, mark_dead_lettered, migrate, table_row_count

GROUP = "logins"
PREVIEW_COLUMNS = ("user_id", "device_type", "masked_ip", "masked_device_id", "locale", "app_version")


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _timing(count: int, started: float) -> dict[str, float]:
    elapsed = time.perf_counter() - started
    return {"elapsed_seconds": round(elapsed, 3), "messages_per_second": _rate(count, elapsed)}


def masked_preview(frame: pd.DataFrame, rows: int = 5) -> str:
    """A markdown table of a few loadable rows: masked columns only, tokens shortened."""
    sample = batch.loadable(frame).loc[:, list(PREVIEW_COLUMNS)].head(rows).copy()
    for column in ("masked_ip", "masked_device_id"):
        sample[column] = sample[column].map(lambda token: f"{token[:16]}…")
    return sample.to_markdown(index=False) if len(sample) else "_no loadable rows in this batch_"


@asset(
    group_name=GROUP,
    io_manager_key="batch_io_manager",
    kinds={"sqs"},
    owners=["team:data-engineering"],
)
def raw_login_messages(
    context: AssetExecutionContext, sqs: SqsResource, pii_masking: PiiMaskingResource
) -> Output[list[QueueMessage]]:
    """One run's batch of login messages received from SQS, held in memory only.

    Messages stay invisible on the queue for the visibility timeout and are deleted only after
    `user_logins` commits them. The masking key is checked first, so a run that cannot mask
    receives nothing.
    """
    pii_masking.masker()
    started = time.perf_counter()
    messages = sqs.receive(progress=lambda n: context.log.info(f"received {n} messages so far"))
    context.log.info(f"received {len(messages)} messages from {sqs.queue_url}")
    return Output(
        messages,
        metadata={
            "received": len(messages),
            "redelivered": sum(m.receive_count > 1 for m in messages),
            "dagster/row_count": len(messages),
            **_timing(len(messages), started),
        },
    )


@asset(
    group_name=GROUP,
    io_manager_key="batch_io_manager",
    kinds={"pandas"},
    owners=["team:data-engineering"],
)
def masked_logins(
    context: AssetExecutionContext, raw_login_messages: list[QueueMessage], pii_masking: PiiMaskingResource
) -> Output[pd.DataFrame]:
    """The batch parsed, validated and pseudonymised: one row per message, no clear PII.

    IPs and device ids become keyed HMAC tokens; invalid messages get a reason instead of values.
    """
    started = time.perf_counter()
    masker = pii_masking.masker()
    frame = batch.mask_messages(raw_login_messages, masker)
    summary = batch.stats(frame)
    context.log.info(f"{summary.loadable} loadable, {summary.rejected} rejected {summary.rejected_by_reason}")
    return Output(
        frame,
        metadata={
            "loadable": summary.loadable,
            "rejected": summary.rejected,
            "rejected_by_reason": MetadataValue.json(summary.rejected_by_reason),
            "unparsed_ips": summary.unparsed_ips,
            "masking_mode": masker.mode,
            "mask_key_id": masker.key_id,
            "dagster/row_count": len(frame),
            "preview": MetadataValue.md(masked_preview(frame)),
            **_timing(len(frame), started),
        },
    )


@asset(
    group_name=GROUP,
    kinds={"postgres"},
    owners=["team:data-engineering"],
)
def user_logins(
    context: AssetExecutionContext,
    masked_logins: pd.DataFrame,
    raw_login_messages: list[QueueMessage],
    postgres: PostgresResource,
    sqs: SqsResource,
) -> MaterializeResult:
    """The `user_logins` table: each valid login exactly once, keyed by its SQS MessageId.

    One transaction loads the batch (COPY, then INSERT ... ON CONFLICT DO NOTHING) and records the
    rejects; only after the commit are rejects forwarded to the dead-letter queue and every handled
    message deleted from the source queue. A crash anywhere means redelivery, never loss or doubling.
    """
    started = time.perf_counter()
    by_id = {m.message_id: m for m in raw_login_messages}
    loadable, rejected = batch.loadable(masked_logins), batch.rejected(masked_logins)
    with postgres.connect() as conn:
        migrate(conn)
        result = load_batch(conn, loadable, rejected)
        forwarded = sqs.dead_letter(batch.dead_letters(rejected, by_id, result.to_dead_letter))
        mark_dead_lettered(conn, forwarded)
        total_rows = table_row_count(conn)
    deletable = [*loadable["message_id"], *result.already_dead_lettered, *forwarded]
    failed = sqs.delete([by_id[mid] for mid in deletable])
    if failed:
        context.log.warning(f"{len(failed)} deletes failed; those messages will be redelivered and skipped")
    context.log.info(
        f"loaded {result.inserted}, already present {result.already_present}, "
        f"rejected {len(rejected)}, dead-lettered {len(forwarded)}, deleted {len(deletable) - len(failed)}"
    )
    return MaterializeResult(
        metadata={
            "received": len(raw_login_messages),
            "loaded": result.inserted,
            "already_present": result.already_present,
            "rejected": len(rejected),
            "rejected_by_reason": MetadataValue.json(batch.stats(masked_logins).rejected_by_reason),
            "dead_lettered": len(forwarded),
            "deleted_from_queue": len(deletable) - len(failed),
            "delete_failures": len(failed),
            "dagster/row_count": total_rows,
            **_timing(len(raw_login_messages), started),
        }
    )
