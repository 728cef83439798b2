"""Read-only probes of the queues, shared by the asset checks, `fetch-etl status` and `fetch-etl redrive`:
where the dead-letter queue is and how deep, the source queue's retention and redrive policy, a sample of
dead letters. They ask SQS only (the warehouse's probes are in warehouse/probes.py).

Nothing here creates a queue or deletes a message: a check or a status call must not change what it looks at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from fetch_etl.queue.messages import MAX_BATCH, QueueDepth, QueueError, QueueMessage, default_dlq_name
from fetch_etl.queue.resource import SqsResource

_NO_SUCH_QUEUE = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})


def dlq_url(sqs: SqsResource) -> str | None:
    """SQS_DLQ_URL, else the `<queue>-dlq` beside the queue if it exists; None when it does not (yet).

    Unlike the pipeline (SqsSending.resolved_dlq_url), this never creates the queue.
    """
    if sqs.dlq_url:
        return sqs.dlq_url
    name = default_dlq_name(sqs.queue_url)
    try:
        return str(sqs.client().get_queue_url(QueueName=name)["QueueUrl"])
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in _NO_SUCH_QUEUE:
            return None
        raise QueueError(f"cannot find the dead-letter queue {name} on {sqs.describe()}: {str(err)[:200]}") from None
    except BotoCoreError as err:
        raise QueueError(f"cannot find the dead-letter queue {name} on {sqs.describe()}: {str(err)[:200]}") from None


def dlq_depth(sqs: SqsResource) -> tuple[str | None, QueueDepth]:
    """(DLQ URL or None, its depth); a DLQ that does not exist yet holds nothing."""
    url = dlq_url(sqs)
    if url is None:
        return None, QueueDepth(visible=0, in_flight=0, delayed=0)
    return url, sqs.on_queue(url).depth()  # a resource for the DLQ itself: an error names the DLQ


@dataclass(frozen=True)
class QueuePolicy:
    retention_s: int | None  # MessageRetentionPeriod: how long a message waiting on the queue survives
    redrive_max_receive_count: int | None  # the queue's own RedrivePolicy, if it has one


def queue_policy(sqs: SqsResource) -> QueuePolicy:
    """The source queue's settings that bound the ack path: its retention and its own redrive limit."""
    response = sqs._call(
        "read the queue's retention and redrive policy",
        sqs.client().get_queue_attributes,
        QueueUrl=sqs.queue_url,
        AttributeNames=["MessageRetentionPeriod", "RedrivePolicy"],
    )
    attrs = response.get("Attributes", {})
    try:
        redrive = int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) if attrs.get("RedrivePolicy") else None
    except (ValueError, KeyError, TypeError):
        redrive = None
    retention = attrs.get("MessageRetentionPeriod")
    return QueuePolicy(int(retention) if retention else None, redrive)


def sample_dead_letters(sqs: SqsResource, url: str, limit: int = 500) -> list[QueueMessage]:
    """Up to `limit` distinct dead letters of the queue at `url`, made visible again at once (bodies unread).

    A receive hides what it returns, and a status call must not hide dead letters: so a short visibility
    timeout, no long poll, and a visibility of 0 for everything seen before returning.
    """
    settings = {**sqs.model_dump(), "queue_url": url, "dlq_url": None, "visibility_timeout": 30, "wait_time_seconds": 0}
    dlq = SqsResource(**settings)
    seen: dict[str, QueueMessage] = {}
    while len(seen) < limit:
        received = [
            m for m, _ in dlq.receive_with_attributes(min(MAX_BATCH, limit - len(seen))) if m.message_id not in seen
        ]
        if not received:
            break
        seen |= {m.message_id: m for m in received}
    if seen:
        dlq.change_visibility(list(seen.values()), 0)
    return list(seen.values())
