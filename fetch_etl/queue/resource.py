"""The SQS side of the pipeline: settings, client, depth and receiving (the calls that write are in sending.py).

Configured with dagster-aws's boto3 fields (region, endpoint, credentials, retries), mirrored in aws_config
so runs skip dagster-aws's slow import; dagster-aws ships no SQS resource. Every failure to reach the queue
surfaces as one `QueueError` sentence naming the endpoint and queue, never a botocore traceback.

Two wire formats under one interface (`SQS_PROTOCOL`): boto3's JSON protocol, or the older query
protocol that the 2022 LocalStack in Fetch's reference image still needs (botocore's own, see sqs_query).
`auto` speaks JSON until an endpoint answers the way that LocalStack does, then query for the rest of
the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import Field, PrivateAttr

from fetch_etl.queue.aws_config import Boto3Configuration
from fetch_etl.queue.client import PROTOCOLS, learned_protocol, legacy_signature, make_client
from fetch_etl.queue.heartbeat import VisibilityHeartbeat
from fetch_etl.queue.messages import (
    DEFAULT_MAX_RECEIVE_COUNT,
    MAX_BATCH,
    RECEIVED_ATTRIBUTES,
    QueueDepth,
    QueueError,
    QueueMessage,
    body_bytes,
    queue_message,
)
from fetch_etl.queue.receiver import ParallelReceiver
from fetch_etl.queue.sending import SqsSending

log = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "http://localhost:4566/000000000000/login-queue"
# botocore logs whole request and response payloads (message bodies: clear PII) at DEBUG.
_PAYLOAD_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.auth")


def quiet_payload_logging() -> None:
    """Keep message bodies out of logs even when an operator turns Python logging to DEBUG."""
    for name in _PAYLOAD_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


class SqsResource(Boto3Configuration, SqsSending):
    """An SQS queue of login events and its dead-letter queue."""

    queue_url: str = Field(default=DEFAULT_QUEUE_URL, description="URL of the source queue (SQS_QUEUE_URL).")
    dlq_url: str | None = Field(
        default=None,
        description="Dead-letter queue URL (SQS_DLQ_URL); default: queue name + '-dlq', created if absent.",
    )
    visibility_timeout: int = Field(
        default=120,
        description="Seconds received messages stay invisible; the heartbeat extends them while the run lives, "
        "so a dead run's messages return within this long.",
    )
    max_messages_per_run: int = Field(default=10_000, description="Upper bound on messages one run takes.")
    max_bytes_per_run: int = Field(
        default=256 * 1024 * 1024,
        description="SQS_MAX_BYTES_PER_RUN: stop receiving once the bodies held reach this many bytes (the calls "
        "already in flight are kept: at most receive_threads x 10 messages more).",
    )
    wait_time_seconds: int = Field(
        default=1, description="Long-poll wait; an empty long poll means the queue is drained."
    )
    delete_threads: int = Field(default=8, description="SQS_DELETE_THREADS: parallel DeleteMessageBatch calls.")
    receive_threads: int = Field(
        default=8,
        description="SQS_RECEIVE_THREADS: parallel ReceiveMessage loops; each call returns at most ten messages, "
        "so several overlap their round trips.",
    )
    protocol: str = Field(
        default="auto",
        description="SQS wire protocol (SQS_PROTOCOL): auto, json or query. auto uses JSON and switches to "
        "query for the rest of the process when the endpoint rejects JSON like the 2022 LocalStack does.",
    )

    max_receive_count: int = Field(
        default=DEFAULT_MAX_RECEIVE_COUNT,
        description="SQS_MAX_RECEIVE_COUNT: a message received more often than this without being loaded is "
        "dead-lettered as poison instead of processed again.",
    )
    heartbeat: bool = Field(
        default=True, description="Extend the visibility of held messages until they are deleted or the run ends."
    )

    _client: Any = PrivateAttr(default=None)
    _heartbeat: VisibilityHeartbeat | None = PrivateAttr(default=None)
    _receive_stop: str = PrivateAttr(default="")

    # --- connection -------------------------------------------------------------------------

    def effective_endpoint(self) -> str | None:
        """Explicit endpoint, else boto3's AWS_ENDPOINT_URL, else the queue URL's host when not AWS."""
        if self.endpoint_url:
            return self.endpoint_url
        env = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
        if env:
            return env
        parts = urlsplit(self.queue_url)
        if parts.hostname and not parts.hostname.endswith("amazonaws.com"):
            return f"{parts.scheme}://{parts.netloc}"
        return None

    def client(self) -> Any:
        """A thread-safe SQS client with boto3's method names and answers, built once per resource instance.

        boto3's JSON client (json), boto3's query client (query) or an AutoProtocolClient choosing between them.
        """
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def wire_protocol(self) -> str:
        """The protocol calls use now: json or query, or auto while an auto client has not yet decided."""
        protocol = self._protocol()
        return (learned_protocol(self._endpoint_key()) or "auto") if protocol == "auto" else protocol

    def _protocol(self) -> str:
        protocol = (self.protocol or "auto").strip().lower()
        if protocol not in PROTOCOLS:
            raise QueueError(f"SQS_PROTOCOL must be one of auto, json, query (got {self.protocol!r})")
        return protocol

    def _region(self) -> str:
        return self.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def _endpoint_key(self) -> str:
        return self.effective_endpoint() or f"https://sqs.{self._region()}.amazonaws.com"

    def _make_client(self) -> Any:
        quiet_payload_logging()
        return make_client(self, self._protocol(), self._endpoint_key(), self._region())

    def describe(self) -> str:
        return f"queue {self.queue_url} at endpoint {self.effective_endpoint() or 'AWS default'}"

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run one SQS call; turn every failure into a one-sentence QueueError."""
        try:
            return fn(**kwargs)
        except NoCredentialsError:
            raise QueueError(
                f"cannot {what} on {self.describe()}: no AWS credentials "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with a task or pod role)",
                "NoCredentials",
            ) from None
        except ClientError as err:
            error = err.response.get("Error", {})
            code = error.get("Code", "error")
            message = str(error.get("Message") or "").split("\n")[0][:200]
            if message.startswith("<"):  # an HTML/XML page botocore could not read: its status says enough
                message = ""
            if self._protocol() == "json" and (signature := legacy_signature(err.response)):
                code, message = (
                    signature,
                    (
                        "to a JSON-protocol request (the endpoint speaks only SQS's older query protocol, like the "
                        "2022 LocalStack); set SQS_PROTOCOL=auto or query"
                    ),
                )
            raise QueueError(f"cannot {what} on {self.describe()}: {code} {message}".rstrip(), str(code)) from None
        except BotoCoreError as err:
            raise QueueError(f"cannot {what} on {self.describe()}: {str(err)[:300]}", type(err).__name__) from None

    # --- reading ----------------------------------------------------------------------------

    def depth(self, queue_url: str | None = None) -> QueueDepth:
        """Approximate counts of visible, in-flight and delayed messages."""
        response = self._call(
            "read the queue depth",
            self.client().get_queue_attributes,
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
        attrs = response.get("Attributes", {})
        return QueueDepth(
            visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
        )

    def receive(self, limit: int | None = None, progress: Callable[[int], None] | None = None) -> list[QueueMessage]:
        """Receive up to `limit` messages and `max_bytes_per_run` of bodies with `receive_threads` receivers.

        Receiving ends when a short receive finds no visible message left (else at an empty long poll), at
        either limit, half a visibility timeout after it began (what the heartbeat can keep invisible), or when
        a held message comes back expired, so a run always ends.
        A message received twice keeps only its newest receipt handle, so each MessageId is handled once per
        run. See sqs_receive for the polling policy; `last_receive_stop` says which of these ended it.
        """
        limit = self.max_messages_per_run if limit is None else limit
        client = self.client()  # built once, before the receivers share it

        def fetch(max_messages: int, wait_seconds: int) -> list[QueueMessage]:
            response = self._call(
                "receive messages",
                client.receive_message,
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=self.visibility_timeout,
                MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
                MessageAttributeNames=list(RECEIVED_ATTRIBUTES),
            )
            return [queue_message(raw) for raw in response.get("Messages", [])]

        receiver = ParallelReceiver(
            fetch,
            self._hold,
            limit=limit,
            threads=self.receive_threads,
            wait_time_seconds=self.wait_time_seconds,
            max_bytes=self.max_bytes_per_run,
            size=body_bytes,
            max_seconds=self.visibility_timeout / 2,
            expired_after=self.visibility_timeout / 2,
            queue_empty=lambda: self.depth().visible == 0,
        )
        messages = receiver.run(progress)
        self._receive_stop = receiver.stop_reason
        return messages

    @property
    def last_receive_stop(self) -> str:
        """Why the last receive() ended: drained, limit, bytes, deadline or redelivered."""
        return self._receive_stop

    # --- holding ----------------------------------------------------------------------------

    def _hold(self, messages: Iterable[QueueMessage]) -> None:
        """Keep received messages invisible until deleted or the run ends (see sqs_heartbeat)."""
        if not self.heartbeat:
            return
        if self._heartbeat is None:
            client = self.client()
            self._heartbeat = VisibilityHeartbeat(
                lambda entries: client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries),
                self.visibility_timeout,
                threads=self.receive_threads,  # as wide as the receivers, so a beat keeps up with what they took
            )
        self._heartbeat.hold(messages)

    def release(self) -> int:
        """Stop extending visibility (end of run); returns how many extensions were made."""
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is None:
            return 0
        heartbeat.stop()
        return heartbeat.extensions

    def teardown_after_execution(self, context: Any) -> None:
        """A failed run lets go of its messages: they return after at most one visibility timeout."""
        self.release()

    # --- any queue, with message attributes (redrive) ----------------------------------------

    def on_queue(self, queue_url: str) -> SqsResource:
        """The same settings addressed at another queue (the DLQ, say), so its errors name that queue."""
        return SqsResource(**{**self.model_dump(), "queue_url": queue_url, "dlq_url": None})

    def receive_with_attributes(self, max_messages: int = MAX_BATCH) -> list[tuple[QueueMessage, dict[str, str]]]:
        """One ReceiveMessage call, each message with its String message attributes (a dead letter's reason)."""
        response = self._call(
            "receive messages",
            self.client().receive_message,
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(MAX_BATCH, max_messages)),
            WaitTimeSeconds=self.wait_time_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        return [
            (
                queue_message(raw),
                {
                    name: str(value["StringValue"])
                    for name, value in (raw.get("MessageAttributes") or {}).items()
                    if "StringValue" in value
                },
            )
            for raw in response.get("Messages", [])
        ]
