"""What travels on the queue, as the pipeline sees it: received messages, dead letters, depths, SQS's limits.

Plain data and pure helpers, no client: the SQS resource (`resource.py`), the ack step, redrive and the
probes share these shapes. A message's `body` may hold clear PII and lives only in memory; no repr shows it.

"Batch", everywhere in fetch-etl, means one SQS call's entries: one ReceiveMessage or one *Batch call
(DeleteMessageBatch, SendMessageBatch, ChangeMessageVisibilityBatch) of at most MAX_BATCH messages. What one
run takes from the queue is "the run's messages"; rotate-key's committed units are "pages".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MAX_BATCH = 10  # SQS's limit per call: ReceiveMessage and every *Batch call (the one home of the 10)
MAX_BATCH_BYTES = 256 * 1024  # SQS caps a send batch (bodies and message attributes) at 256 KiB
# Message attributes the pipeline reads: set on dead letters we forward, kept by `fetch-etl redrive`.
# A copy keeps its original's identity and SentTimestamp (so create_date stays the login's date).
ORIGINAL_MESSAGE_ID = "original_message_id"
ORIGINAL_SENT_TIMESTAMP = "original_sent_timestamp"
REDRIVEN_AT = "redriven_at"
RECEIVED_ATTRIBUTES = (ORIGINAL_MESSAGE_ID, ORIGINAL_SENT_TIMESTAMP, REDRIVEN_AT)
# SQS_MAX_RECEIVE_COUNT's default. A queue's own redrive policy must allow more receives than this, or SQS
# moves a failing message to the DLQ before the pipeline can record it (docs/reliability.md).
DEFAULT_MAX_RECEIVE_COUNT = 10
DLQ_SUFFIX = "-dlq"  # the default dead-letter queue sits beside the queue: `<queue name>-dlq`


def default_dlq_name(queue: str) -> str:
    """The dead-letter queue used when SQS_DLQ_URL is unset: the queue's name (from its URL) + '-dlq'."""
    return queue.rstrip("/").rsplit("/", 1)[-1] + DLQ_SUFFIX


class QueueError(RuntimeError):
    """The queue could not be used; the message is one sentence that says what was tried.

    `code` is SQS's error code (or botocore's error class) where there was one, for callers that record it.
    """

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One received message; `body` may hold clear PII and lives only in memory.

    `key` is the identity its outcome is stored under: the MessageId it first had, which a dead letter
    and a redriven copy carry as `original_message_id` (each copy gets a new SQS MessageId).
    """

    message_id: str
    receipt_handle: str
    body: str
    sent_timestamp: str | None
    receive_count: int
    original_message_id: str | None = None
    redriven_at: str | None = None  # set by `fetch-etl redrive`: evaluate afresh, once per redrive

    @property
    def key(self) -> str:
        return self.original_message_id or self.message_id

    def __repr__(self) -> str:  # keep bodies out of logs and tracebacks
        return f"QueueMessage(message_id={self.message_id!r}, key={self.key!r}, receive_count={self.receive_count})"


@dataclass(frozen=True, slots=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message to forward unchanged, with why, to the dead-letter queue."""

    message: QueueMessage
    reason_code: str
    reason: str

    def attributes(self) -> dict[str, dict[str, str]]:
        return {
            "reason": {"DataType": "String", "StringValue": self.reason},
            "reason_code": {"DataType": "String", "StringValue": self.reason_code},
            ORIGINAL_MESSAGE_ID: {"DataType": "String", "StringValue": self.message.key},
            **(
                {ORIGINAL_SENT_TIMESTAMP: {"DataType": "String", "StringValue": self.message.sent_timestamp}}
                if self.message.sent_timestamp
                else {}
            ),
        }

    def size(self) -> int:
        """Bytes SQS counts toward its size limit: the body and every attribute's name, type and value."""
        attributes = sum(
            len(name) + len(a["DataType"]) + len(a["StringValue"].encode()) for name, a in self.attributes().items()
        )
        return len(self.message.body.encode()) + attributes


@dataclass(frozen=True)
class DeadLetterResult:
    """Which rejects reached the dead-letter queue (by key) and, for those that did not, the error code."""

    forwarded: list[str]
    failed: dict[str, str]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


MAX_MESSAGE_ATTRIBUTES = 10  # SQS's limit per message (send_with_attributes)


def body_bytes(message: QueueMessage) -> int:
    """What a message's body weighs on the wire (UTF-8), as SQS and SQS_MAX_BYTES_PER_RUN count it."""
    return len(message.body.encode("utf-8", "surrogatepass"))


def queue_message(raw: dict[str, Any]) -> QueueMessage:
    attrs = raw.get("Attributes", {})
    custom = raw.get("MessageAttributes", {})
    return QueueMessage(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        sent_timestamp=custom.get(ORIGINAL_SENT_TIMESTAMP, {}).get("StringValue") or attrs.get("SentTimestamp"),
        receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
        original_message_id=custom.get(ORIGINAL_MESSAGE_ID, {}).get("StringValue") or None,
        redriven_at=custom.get(REDRIVEN_AT, {}).get("StringValue") or None,
    )


def batches_by_size(items: Sequence[Any], size_of: Callable[[Any], int]) -> Iterator[list[Any]]:
    """Batches of at most ten items and MAX_BATCH_BYTES of payload (a lone large item goes alone)."""
    batch: list[Any] = []
    total = 0
    for item in items:
        size = size_of(item)
        if batch and (len(batch) == MAX_BATCH or total + size > MAX_BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size
    if batch:
        yield batch
