"""The fault proxy does what its rules say, on both wire protocols, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fetch_etl.local.stack import QueueUrls
from fetch_etl_tests.helpers import drain, sqs_resource
from fetch_etl_tests.sqs_fault_proxy import SqsFaultProxy

PROTOCOLS = ["json", "query"]


@pytest.fixture
def proxy(sqs_endpoint: str) -> Iterator[SqsFaultProxy]:
    with SqsFaultProxy(sqs_endpoint) as running:
        yield running


def _client(proxy: SqsFaultProxy, queue_urls: QueueUrls, protocol: str) -> tuple[Any, QueueUrls]:
    queues = QueueUrls(proxy.queue_url(queue_urls.queue_url), proxy.queue_url(queue_urls.dlq_url))
    return sqs_resource(proxy.endpoint, queues, protocol=protocol, max_attempts=1).client(), queues


def _entries(bodies: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "Id": f"e{i}",
            "MessageBody": body,
            "MessageAttributes": {"n": {"DataType": "String", "StringValue": str(i)}},
        }
        for i, body in enumerate(bodies)
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_entries_whose_body_contains_the_marker_fail_and_the_rest_reach_the_queue(
    proxy: SqsFaultProxy, sqs_client: Any, queue_urls: QueueUrls, protocol: str
) -> None:
    client, queues = _client(proxy, queue_urls, protocol)
    rule = proxy.fail_entries("SendMessageBatch", body_contains="BAD", code="InvalidParameterValue", sender_fault=True)
    answer = client.send_message_batch(QueueUrl=queues.queue_url, Entries=_entries(["a", "BAD 1", "b", "c BAD"]))

    assert sorted(ok["Id"] for ok in answer["Successful"]) == ["e0", "e2"]
    assert sorted((f["Id"], f["Code"], f["SenderFault"]) for f in answer["Failed"]) == [
        ("e1", "InvalidParameterValue", True),
        ("e3", "InvalidParameterValue", True),
    ]
    stored = {m["Body"]: m["MessageAttributes"]["n"]["StringValue"] for m in drain(sqs_client, queue_urls.queue_url)}
    assert stored == {"a": "0", "b": "2"}, "the kept entries arrive whole, attributes included"
    assert rule.hits == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_delete_entry_can_fail(
    proxy: SqsFaultProxy, sqs_client: Any, queue_urls: QueueUrls, protocol: str
) -> None:
    client, queues = _client(proxy, queue_urls, protocol)
    sqs_client.send_message_batch(QueueUrl=queue_urls.queue_url, Entries=_entries(["a", "b", "c"]))
    received = client.receive_message(QueueUrl=queues.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    proxy.fail_entries("DeleteMessageBatch")
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received["Messages"])]
    answer = client.delete_message_batch(QueueUrl=queues.queue_url, Entries=entries)

    assert not answer.get("Successful") and len(answer["Failed"]) == len(entries) == 3
    assert len(drain(sqs_client, queue_urls.queue_url)) == 3, "nothing was deleted"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("status", "code", "seen_as"),
    [(400, "BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong"), (403, "AccessDenied", "AccessDenied")],
)
def test_a_whole_call_to_one_queue_fails_as_that_protocol_says_it(
    proxy: SqsFaultProxy,
    sqs_client: Any,
    queue_urls: QueueUrls,
    protocol: str,
    status: int,
    code: str,
    seen_as: str,
) -> None:
    client, queues = _client(proxy, queue_urls, protocol)
    rule = proxy.fail_call("SendMessageBatch", queue=queues.dlq_url, status=status, code=code, times=1)
    with pytest.raises(ClientError) as raised:
        client.send_message_batch(QueueUrl=queues.dlq_url, Entries=_entries(["x"]))
    error = raised.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (seen_as, status)

    client.send_message_batch(QueueUrl=queues.queue_url, Entries=_entries(["other queue"]))
    client.send_message_batch(QueueUrl=queues.dlq_url, Entries=_entries(["times used up"]))
    assert [m["Body"] for m in drain(sqs_client, queue_urls.queue_url)] == ["other queue"]
    assert [m["Body"] for m in drain(sqs_client, queue_urls.dlq_url)] == ["times used up"]
    assert rule.hits == 1
    assert proxy.calls.count(("SendMessageBatch", queue_urls.dlq_url.rsplit("/", 1)[-1])) == 2
