"""Replaying dead letters: move messages from the DLQ back to the source queue, once each.

Shared by `fetch-etl redrive` and the `redrive_dead_letters` job. A moved message keeps its body and the
`original_message_id` the pipeline keys it by, and gains `redriven_at`; nothing else (its old reason is not
carried: the pipeline evaluates it afresh). A dead letter is deleted from the DLQ only after its send
succeeded. Messages not to move (other reasons, past --limit, refused sends, a dry run) are held while the
run walks the DLQ, so an empty poll means "nothing left to look at", then made visible again at once.
Nothing here logs or prints a body.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from fetch_etl.queue import probes as queue_probes
from fetch_etl.queue.messages import (
    MAX_BATCH,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SENT_TIMESTAMP,
    REDRIVEN_AT,
    QueueError,
    QueueMessage,
)
from fetch_etl.queue.resource import SqsResource

log = logging.getLogger(__name__)

REASON_CODE = "reason_code"
# The reason of a dead letter without a reason_code attribute: moved there by SQS's own redrive policy or by hand.
UNRECORDED = "unrecorded"


class RedriveQueue(Protocol):
    """What redrive needs of a queue: an `SqsResource` bound to it (see `SqsResource.on_queue`)."""

    queue_url: str

    def receive_with_attributes(self, max_messages: int = MAX_BATCH) -> list[tuple[QueueMessage, dict[str, str]]]: ...
    def send_with_attributes(self, items: Sequence[tuple[str, dict[str, str]]]) -> dict[int, str]: ...
    def delete(self, messages: Sequence[QueueMessage]) -> list[str]: ...
    def change_visibility(self, messages: Sequence[QueueMessage], seconds: int) -> list[str]: ...


@dataclass
class RedriveResult:
    """Counts by reason code; `moved` is what a dry run would move."""

    queue_url: str
    dlq_url: str
    dry_run: bool
    moved: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # another reason than --reason asked for
    failed: Counter[str] = field(default_factory=Counter)  # could not be sent back: still in the DLQ
    failure_codes: Counter[str] = field(default_factory=Counter)
    not_deleted: int = 0  # sent back, but still in the DLQ too
    error: str | None = None  # a whole call failed: the run stopped there

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_deleted and self.error is None

    def failure(self) -> str | None:
        """One sentence on what went wrong, or None."""
        parts: list[str] = []
        if self.error:
            parts.append(self.error)
        if self.failed:
            codes = ", ".join(f"{code} x{n}" for code, n in sorted(self.failure_codes.items()))
            parts.append(
                f"{self.failed.total()} dead letters could not be sent back to {self.queue_url} ({codes}) "
                "and stay in the dead-letter queue"
            )
        if self.not_deleted:
            parts.append(
                f"{self.not_deleted} messages were sent back but could not be deleted from the dead-letter queue "
                "(a later redrive sends them again; the pipeline lands each once, by original_message_id)"
            )
        return "; ".join(parts) or None

    def table(self) -> str:
        from tabulate import tabulate  # for the CLI's table only; a run loads this module too

        reasons = sorted(set(self.moved) | set(self.skipped) | set(self.failed))
        moved = "would move" if self.dry_run else "moved"
        rows = [(r, self.moved[r], self.skipped[r], self.failed[r]) for r in reasons]
        rows.append(("total", self.moved.total(), self.skipped.total(), self.failed.total()))
        return tabulate(rows, headers=["reason_code", moved, "left (other reason)", "failed"], tablefmt="github")

    def metadata(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "moved": self.moved.total(),
            "moved_by_reason": dict(self.moved),
            "skipped_by_reason": dict(self.skipped),
            "failed_by_reason": dict(self.failed),
            "not_deleted": self.not_deleted,
        }


def redriven_attributes(message: QueueMessage, now: datetime) -> dict[str, str]:
    """What the source queue's copy carries: the key the pipeline stores it under, the original's
    SentTimestamp (so create_date stays the login's date), and when it was redriven.

    A dead letter SQS's own redrive policy moved has no attributes but kept its MessageId and SentTimestamp,
    which `QueueMessage.key` and `sent_timestamp` fall back to.
    """
    return {
        ORIGINAL_MESSAGE_ID: message.key,
        **({ORIGINAL_SENT_TIMESTAMP: message.sent_timestamp} if message.sent_timestamp else {}),
        REDRIVEN_AT: now.isoformat(timespec="milliseconds"),
    }


def redrive(
    sqs: SqsResource, reasons: Collection[str] = (), limit: int | None = None, dry_run: bool = False
) -> RedriveResult:
    """Move dead letters of `sqs` (SQS_DLQ_URL or its default) back to its queue; see the module docstring.

    A default DLQ that does not exist yet holds nothing: it is not created (a dry run changes nothing).
    """
    dlq_url = queue_probes.dlq_url(sqs)
    if dlq_url is None:
        return RedriveResult(sqs.queue_url, "-", dry_run)
    return redrive_between(sqs.on_queue(dlq_url), sqs, reasons, limit, dry_run)


def redrive_between(
    dlq: RedriveQueue,
    source: RedriveQueue,
    reasons: Collection[str] = (),
    limit: int | None = None,
    dry_run: bool = False,
) -> RedriveResult:
    """Walk the DLQ until an empty poll, a MessageId seen before, --limit, or a failed call; then release."""
    result = RedriveResult(source.queue_url, dlq.queue_url, dry_run)
    wanted = set(reasons)
    seen: set[str] = set()
    held: dict[str, QueueMessage] = {}  # received, not deleted: made visible again at the end (newest handle)
    try:
        while limit is None or result.moved.total() < limit:
            received = dlq.receive_with_attributes(MAX_BATCH)
            if not received:
                break
            to_move: list[tuple[QueueMessage, dict[str, str], str]] = []
            repeated = False
            for message, attributes in received:
                reason = attributes.get(REASON_CODE) or UNRECORDED
                if message.message_id in seen:  # it came back (its hold ran out): everything was looked at
                    repeated = True
                    held[message.message_id] = message
                elif wanted and reason not in wanted:
                    result.skipped[reason] += 1
                    held[message.message_id] = message
                elif limit is not None and result.moved.total() + len(to_move) >= limit:
                    held[message.message_id] = message
                else:
                    to_move.append((message, attributes, reason))
                seen.add(message.message_id)
            if dry_run:
                result.moved.update(reason for _, _, reason in to_move)
                held |= {message.message_id: message for message, _, _ in to_move}
            else:
                _move(dlq, source, to_move, result, held)
            if repeated or result.error:
                break
    except QueueError as err:
        result.error = str(err)
    finally:
        _release(dlq, list(held.values()))
    return result


def _move(
    dlq: RedriveQueue,
    source: RedriveQueue,
    to_move: list[tuple[QueueMessage, dict[str, str], str]],
    result: RedriveResult,
    held: dict[str, QueueMessage],
) -> None:
    """Send one batch to the source queue, then delete from the DLQ exactly the ones that were sent."""
    if not to_move:
        return
    now = datetime.now(UTC)
    try:
        refused = source.send_with_attributes(
            [(message.body, redriven_attributes(message, now)) for message, _, _ in to_move]
        )
    except QueueError as err:
        result.error = str(err)
        refused = dict.fromkeys(range(len(to_move)), "call failed")
    for index, code in refused.items():
        message, _, reason = to_move[index]
        result.failed[reason] += 1
        result.failure_codes[code] += 1
        held[message.message_id] = message
    sent = [(m, reason) for i, (m, _, reason) in enumerate(to_move) if i not in refused]
    if not sent:
        return
    result.moved.update(reason for _, reason in sent)
    try:
        result.not_deleted += len(dlq.delete([m for m, _ in sent]))
    except QueueError as err:
        result.error = str(err)
        result.not_deleted += len(sent)


def _release(dlq: RedriveQueue, held: list[QueueMessage]) -> None:
    """Make held messages visible again now; if that fails they return when their visibility times out."""
    if not held:
        return
    try:
        if failed := dlq.change_visibility(held, 0):
            log.warning("%d dead letters stay invisible until their visibility timeout", len(failed))
    except QueueError as err:
        log.warning("dead letters stay invisible until their visibility timeout: %s", err)


def redrive_from_env(
    environ: Mapping[str, str], reasons: Collection[str] = (), limit: int | None = None, dry_run: bool = False
) -> RedriveResult:
    """The pipeline's SQS settings from the environment (as `fetch-etl status` reads them), full retries."""
    from fetch_etl.ops.status import resources_from_env  # here: a run, which loads this module, needs none of status

    quick, _ = resources_from_env(environ)
    sqs = SqsResource(**{**quick.model_dump(), "max_attempts": SqsResource.model_fields["max_attempts"].default})
    return redrive(sqs, reasons, limit, dry_run)
