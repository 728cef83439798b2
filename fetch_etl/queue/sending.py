"""The SQS calls that write: delete, dead-letter, send, change visibility — SQS's *Batch calls, ten entries
(and 256 KiB) per call, grouped by `chunks` / `batches_by_size` (queue/messages.py).

A mixin of `SqsResource` (queue/resource.py), which brings the settings, `client()` and `_call` (one
`QueueError` sentence per failure); kept apart so each file reads as one side of the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fetch_etl.queue.messages import (
    MAX_BATCH,
    MAX_MESSAGE_ATTRIBUTES,
    DeadLetter,
    DeadLetterResult,
    QueueError,
    QueueMessage,
    batches_by_size,
    chunks,
    default_dlq_name,
)

log = logging.getLogger("fetch_etl.queue.resource")


class SqsSending:
    """Writing to SQS. Methods only (no fields, so the resource's config is unchanged): they use SqsResource's
    `client()`, `_call`, `describe()`, `_heartbeat` and settings (queue_url, dlq_url, delete_threads)."""

    def delete(self, messages: Sequence[QueueMessage]) -> list[str]:
        """Delete messages in batches of ten, in parallel; returns the MessageIds that were not deleted.

        Never raises: it runs after the commit, when a failure to acknowledge only means a redelivery that
        the next run recognises from what is stored. A call that fails after botocore's retries counts all
        its entries as failed and is logged (one sentence, no message content).
        """
        client = self.client()
        if self._heartbeat is not None:
            self._heartbeat.release(m.message_id for m in messages)

        def delete_batch(batch: Sequence[QueueMessage]) -> list[str]:
            try:
                response = self._call(
                    "delete messages",
                    client.delete_message_batch,
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(batch)],
                )
            except QueueError as err:
                log.warning(
                    "%s; %d messages stay on the queue and will be acknowledged when redelivered", err, len(batch)
                )
                return [m.message_id for m in batch]
            return [batch[int(f["Id"])].message_id for f in response.get("Failed", [])]

        batches = list(chunks(messages, MAX_BATCH))
        if len(batches) <= 1:
            return [mid for batch in batches for mid in delete_batch(batch)]
        with ThreadPoolExecutor(max_workers=self.delete_threads, thread_name_prefix="sqs-delete") as pool:
            return [mid for failed in pool.map(delete_batch, batches) for mid in failed]

    def resolved_dlq_url(self) -> str:
        """SQS_DLQ_URL, or the default `<queue>-dlq` beside the queue (created if absent; the read-only
        probes in queue/probes.py find it without creating it)."""
        if self.dlq_url:
            return self.dlq_url
        name = default_dlq_name(self.queue_url)
        response = self._call("create the dead-letter queue", self.client().create_queue, QueueName=name)
        return response["QueueUrl"]

    def dead_letter(self, letters: Sequence[DeadLetter]) -> DeadLetterResult:
        """Forward rejected bodies unchanged, with reason, reason code and original MessageId as attributes.

        Never raises. A batch call that fails as a whole (BatchRequestTooLong, AccessDenied, a KMS error…)
        is retried entry by entry, so one letter the dead-letter queue refuses does not hold back the
        others. Only forwarded letters may be deleted from the source queue; the rest stay there, and
        `failed` says why (an SQS error code, never message content).
        """
        if not letters:
            return DeadLetterResult([], {})
        try:
            dlq_url = self.resolved_dlq_url()
        except QueueError as err:
            log.warning("%s", err)
            return DeadLetterResult([], {letter.message.key: err.code for letter in letters})
        forwarded: list[str] = []
        failed: dict[str, str] = {}
        for batch in batches_by_size(letters, DeadLetter.size):
            try:
                ok, refused = self._send_dead_letters(dlq_url, batch)
            except QueueError as whole:
                log.warning("%s; retrying its %d entries one by one", whole, len(batch))
                ok, refused = [], {}
                for letter in batch:
                    try:
                        one_ok, one_refused = self._send_dead_letters(dlq_url, [letter])
                    except QueueError as single:
                        one_ok, one_refused = [], {letter.message.key: single.code}
                    ok += one_ok
                    refused.update(one_refused)
            forwarded += ok
            failed.update(refused)
        for key, code in failed.items():
            log.warning("dead-letter queue refused message %s: %s; it stays on the source queue", key, code)
        return DeadLetterResult(forwarded, failed)

    def _send_dead_letters(self, dlq_url: str, batch: Sequence[DeadLetter]) -> tuple[list[str], dict[str, str]]:
        """One SendMessageBatch: (forwarded keys, {key: error code} of refused entries)."""
        entries = [
            {"Id": str(i), "MessageBody": letter.message.body, "MessageAttributes": letter.attributes()}
            for i, letter in enumerate(batch)
        ]
        response = self._call(
            "forward rejects to the dead-letter queue",
            self.client().send_message_batch,
            QueueUrl=dlq_url,
            Entries=entries,
        )
        ok = [batch[int(entry["Id"])].message.key for entry in response.get("Successful", [])]
        refused = {batch[int(f["Id"])].message.key: str(f.get("Code") or "error") for f in response.get("Failed", [])}
        return ok, refused

    def send_bodies(self, bodies: Iterable[str], threads: int = 4) -> int:
        """Send message bodies to the source queue (seeding, demos); returns how many were sent."""
        client = self.client()

        def send(batch: Sequence[str]) -> int:
            response = self._call(
                "send messages",
                client.send_message_batch,
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)],
            )
            if response.get("Failed"):
                codes = sorted({f.get("Code", "error") for f in response["Failed"]})
                raise QueueError(f"cannot send messages on {self.describe()}: {', '.join(codes)}")
            return len(batch)

        batches = list(batches_by_size(list(bodies), lambda body: len(body.encode())))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqs-send") as pool:
            return sum(pool.map(send, batches))

    def send_with_attributes(self, items: Sequence[tuple[str, dict[str, str]]]) -> dict[int, str]:
        """Send (body, String attributes) pairs in size-bounded batches; returns failed item index -> error code.

        A whole call that fails raises QueueError; items of batches already sent stay sent.
        """
        if any(len(attributes) > MAX_MESSAGE_ATTRIBUTES for _, attributes in items):
            raise ValueError(f"SQS allows at most {MAX_MESSAGE_ATTRIBUTES} message attributes")

        def size(index: int) -> int:
            body, attributes = items[index]
            return len(body.encode()) + sum(len(k.encode()) + len(v.encode()) + 6 for k, v in attributes.items())

        failed: dict[int, str] = {}
        for batch in batches_by_size(range(len(items)), size):
            entries = [
                {
                    "Id": str(index),
                    "MessageBody": items[index][0],
                    "MessageAttributes": {
                        name: {"DataType": "String", "StringValue": value} for name, value in items[index][1].items()
                    },
                }
                for index in batch
            ]
            response = self._call(
                "send messages", self.client().send_message_batch, QueueUrl=self.queue_url, Entries=entries
            )
            failed |= {int(f["Id"]): str(f.get("Code") or "error") for f in response.get("Failed", [])}
        return failed

    def change_visibility(self, messages: Sequence[QueueMessage], seconds: int) -> list[str]:
        """Set held messages' visibility (0: visible again at once); returns the MessageIds that failed."""
        failed: list[str] = []
        for batch in chunks(messages, MAX_BATCH):
            response = self._call(
                "change message visibility",
                self.client().change_message_visibility_batch,
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                    for i, m in enumerate(batch)
                ],
            )
            failed += [batch[int(f["Id"])].message_id for f in response.get("Failed", [])]
        return failed
