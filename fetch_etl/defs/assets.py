"""The lineage: raw_login_messages -> masked_logins -> user_logins.

Each asset is a few lines; the work lives in pure functions (logins/: records, masking, frame; metadata)
and in the resources. Messages leave the queue only after the Postgres commit that makes them safe.
The checks on `user_logins` live in `checks.py`.
"""

import importlib
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetExecutionContext,
    DagsterType,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)

from fetch_etl.defs.automation import INGEST_POOL
from fetch_etl.defs.metadata import (
    PREVIEW_COLUMNS,
    masked_logins_schema,
    rate,
    rows_preview,
    user_logins_lineage,
    user_logins_schema,
)
from fetch_etl.logins import frame as login_frame
from fetch_etl.logins.resource import PiiMaskingResource
from fetch_etl.queue import ack
from fetch_etl.queue.messages import QueueMessage, body_bytes
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse import probes
from fetch_etl.warehouse.load import (
    check_mask_key,
    load_run,
    migrate,
    stored_outcomes,
    table_row_count,
    varchar_counts_bytes,
)
from fetch_etl.warehouse.resource import PostgresResource

if TYPE_CHECKING:
    import pandas as pd

GROUP = "logins"
# pandas (about a second to import) is not needed to load the definitions or to start receiving: a run imports
# it in the background while its first receives are on the wire (`raw_login_messages`), so the masking step
# finds it loaded. The frame's Dagster type is named here without importing pandas.
MASKED_FRAME = DagsterType(
    name="DataFrame",
    description="pandas.DataFrame of the run's messages: one row per message, masked columns only",
    type_check_fn=lambda _context, value: (
        type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas")
    ),
)


def _timing(count: int, started: float) -> dict[str, float]:
    elapsed = time.perf_counter() - started
    return {"elapsed_seconds": round(elapsed, 3), "messages_per_second": rate(count, elapsed)}


def _run_throughput(context: AssetExecutionContext, count: int) -> dict[str, float]:
    """Messages per second over the whole run so far (receive, mask and load), from the run's start time."""
    record = context.instance.get_run_record_by_id(context.run.run_id)
    if record is None or record.start_time is None:
        return {}
    elapsed = datetime.now(UTC).timestamp() - record.start_time
    return {"run_elapsed_seconds": round(elapsed, 3), "run_messages_per_second": rate(count, elapsed)}


def import_pandas_in_background() -> None:
    """Start importing pandas on a daemon thread (the import lock makes a later `import pandas` wait for it)."""
    threading.Thread(target=importlib.import_module, args=("pandas",), name="import-pandas", daemon=True).start()


def masked_preview(frame: "pd.DataFrame", rows: int = 5) -> str:
    """A markdown table of a few loadable rows: masked columns only, tokens shortened."""
    sample = login_frame.loadable(frame).head(rows).to_dict("records")
    return rows_preview(sample, empty="_no loadable rows in this run_")


@asset(
    group_name=GROUP,
    pool=INGEST_POOL,
    io_manager_key="batch_io_manager",
    kinds={"sqs"},
    owners=["team:data-engineering"],
)
def raw_login_messages(
    context: AssetExecutionContext, sqs: SqsResource, pii_masking: PiiMaskingResource, postgres: PostgresResource
) -> Output[list[QueueMessage]]:
    """One run's login messages received from SQS, held in memory only.

    Messages stay invisible while the run holds them (a heartbeat extends the visibility timeout) and
    are deleted only after `user_logins` commits them. First the run checks that it can mask with the
    key the stored tokens were made with and that Postgres answers, so a run that could not finish
    receives nothing.
    """
    masker = pii_masking.masker()
    with postgres.connect() as conn:
        migrate(conn)
        check_mask_key(conn, masker.key_id, masker.mode)
    sqs.client()  # built before pandas starts loading beside it, so the first ReceiveMessage goes out at once
    import_pandas_in_background()
    started = time.perf_counter()
    messages = sqs.receive(progress=lambda n: context.log.info(f"received {n} messages so far"))
    context.log.info(f"received {len(messages)} messages from {sqs.queue_url}")
    return Output(
        messages,
        metadata={
            "received": len(messages),
            "redelivered": sum(m.receive_count > 1 for m in messages),
            "received_bytes": sum(body_bytes(m) for m in messages),
            "receive_stopped_by": sqs.last_receive_stop,
            "dagster/row_count": len(messages),
            **_timing(len(messages), started),
        },
    )


@asset(
    group_name=GROUP,
    io_manager_key="batch_io_manager",
    kinds={"pandas"},
    owners=["team:data-engineering"],
    dagster_type=MASKED_FRAME,
)
def masked_logins(
    context: AssetExecutionContext,
    raw_login_messages: list[QueueMessage],
    pii_masking: PiiMaskingResource,
    sqs: SqsResource,
    postgres: PostgresResource,
) -> Output[Any]:
    """The run's messages decided, parsed, validated and pseudonymised: a pandas DataFrame, one row per message.

    A message whose outcome is already stored (a redelivery) keeps that outcome and is not evaluated
    again; the others are parsed, IPs and device ids become keyed tokens (PII_MASKING_MODE), and invalid
    messages get a reason code and a sentence instead of values. No clear PII; in memory only.
    """
    started = time.perf_counter()
    masker = pii_masking.masker()
    with postgres.connect() as conn:
        stored = stored_outcomes(conn, [m.key for m in raw_login_messages])
        limits_in_bytes = varchar_counts_bytes(conn)
    frame = login_frame.mask_messages(
        raw_login_messages,
        masker,
        max_receive_count=sqs.max_receive_count,
        stored=stored,
        limits_in_bytes=limits_in_bytes,
    )
    summary = login_frame.stats(frame)
    context.log.info(
        f"{summary.loadable} loadable, {summary.rejected} rejected {summary.rejected_by_reason}, "
        f"{summary.already_stored} already stored"
    )
    return Output(
        frame,
        metadata={
            "loadable": summary.loadable,
            "rejected": summary.rejected,
            "already_stored": summary.already_stored,
            "rejected_by_reason": MetadataValue.json(summary.rejected_by_reason),
            "unparsed_ips": summary.unparsed_ips,
            "masking_mode": masker.mode,
            "mask_key_id": masker.key_id,
            "dagster/row_count": len(frame),
            "preview": MetadataValue.md(masked_preview(frame)),
            "dagster/column_schema": masked_logins_schema(frame),
            **_timing(len(frame), started),
        },
    )


@asset(
    group_name=GROUP,
    pool=INGEST_POOL,
    kinds={"postgres"},
    owners=["team:data-engineering"],
    metadata={"dagster/column_schema": user_logins_schema()},
)
def user_logins(
    context: AssetExecutionContext,
    masked_logins: Any,  # MASKED_FRAME
    raw_login_messages: list[QueueMessage],
    postgres: PostgresResource,
    sqs: SqsResource,
) -> MaterializeResult:
    """The PostgreSQL table `user_logins`: each valid login exactly once, keyed by its original SQS MessageId.

    Load (one transaction: the new logins by COPY or merge, the rejects in `user_logins_rejected`), then
    acknowledge (forward rejects to the dead-letter queue, delete every message whose outcome is now
    durable; see `ack`), then report. A crash anywhere means redelivery, never loss or doubling, and a
    failure to acknowledge leaves the message for the next run, which recognises it from what is stored.
    """
    started = time.perf_counter()
    summary = login_frame.stats(masked_logins)
    loadable, rejected = login_frame.loadable(masked_logins), login_frame.rejected(masked_logins)
    with postgres.connect() as conn:
        result = load_run(conn, loadable, rejected)
        acked = ack.acknowledge_run(conn, sqs, masked_logins, result, raw_login_messages)
        total_rows = table_row_count(conn)
        live_columns = probes.table_columns(conn)
        newest = probes.newest_rows(conn, PREVIEW_COLUMNS)
        rejected_total = probes.rejects_by_reason(conn)
    forwarding, failed, deleted = acked.forwarding, acked.delete_failures, acked.deleted
    if failed:
        context.log.warning(f"{len(failed)} deletes failed; those messages will be redelivered and acknowledged")
    if forwarding.failed:
        context.log.warning(
            f"{len(forwarding.failed)} rejects could not be forwarded to the dead-letter queue "
            f"({forwarding.errors_by_code()}); they stay on the source queue, their rejects rows record why, "
            "and `fetch-etl status` lists them"
        )
    context.log.info(
        f"loaded {result.inserted}, already present {result.already_present}, rejected {len(rejected)}, "
        f"dead-lettered {len(forwarding.forwarded)}, deleted {deleted}"
    )
    return MaterializeResult(
        metadata={
            "received": len(raw_login_messages),
            "loaded": result.inserted,
            "already_present": result.already_present,
            "load_path": result.path,
            "loaded_at": result.loaded_at.isoformat() if result.loaded_at else "",
            "rejected": len(rejected),
            "rejected_by_reason": MetadataValue.json(summary.rejected_by_reason),
            "already_stored": summary.already_stored,
            "dead_lettered": len(forwarding.forwarded),
            "dead_letter_failures": len(forwarding.failed),
            "dead_letter_errors": MetadataValue.json(forwarding.errors_by_code()),
            "dead_letter_held_elsewhere": len(forwarding.held_elsewhere),
            "deleted_from_queue": deleted,
            "delete_failures": len(failed),
            "visibility_extensions": acked.visibility_extensions,
            "rejected_total_by_reason": MetadataValue.json(rejected_total),
            "dagster/row_count": total_rows,
            "dagster/column_schema": user_logins_schema(live_columns),
            "dagster/column_lineage": user_logins_lineage(name for name, _ in live_columns),
            "newest_rows": MetadataValue.md(rows_preview(newest)),
            **_timing(len(raw_login_messages), started),
            **_run_throughput(context, len(raw_login_messages)),
        }
    )
