"""The default dead-letter queue has one name rule (queue/messages.py): the pipeline creates it where the
read-only probes (queue/probes.py) look for it, and the probes never create it."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from fetch_etl.local.stack import QueueUrls
from fetch_etl.queue import probes as queue_probes
from fetch_etl.queue.messages import QueueDepth, default_dlq_name
from fetch_etl_tests.helpers import sqs_resource


def test_the_default_dlq_is_the_queue_name_plus_dlq() -> None:
    assert default_dlq_name("login-queue") == "login-queue-dlq"
    assert default_dlq_name("http://localhost:4566/000000000000/login-queue") == "login-queue-dlq"
    assert default_dlq_name("https://sqs.eu-west-1.amazonaws.com/123456789012/q/") == "q-dlq"


def test_the_probes_find_the_dlq_the_pipeline_creates_and_create_none(sqs_endpoint: str, sqs_client: Any) -> None:
    name = f"probe-{uuid4().hex[:8]}"
    url = sqs_client.create_queue(QueueName=name)["QueueUrl"]
    sqs = sqs_resource(sqs_endpoint, QueueUrls(url, ""), dlq_url=None)
    try:
        assert queue_probes.dlq_url(sqs) is None
        assert queue_probes.dlq_depth(sqs) == (None, QueueDepth(0, 0, 0))
        assert sqs_client.list_queues(QueueNamePrefix=name).get("QueueUrls") == [url], "the probes created none"
        created = sqs.resolved_dlq_url()  # the pipeline's side: creates `<queue>-dlq`
        assert created.endswith(f"/{name}-dlq")
        assert queue_probes.dlq_url(sqs) == created
        assert queue_probes.dlq_depth(sqs) == (created, QueueDepth(0, 0, 0))
    finally:
        for queue in sqs_client.list_queues(QueueNamePrefix=name).get("QueueUrls", []):
            sqs_client.delete_queue(QueueUrl=queue)
