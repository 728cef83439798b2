"""The query-protocol client against moto's server: every call's XML parsed into boto3's shapes.

Each answer is compared with what boto3's JSON client returns for the same state, so the assets see one
interface whichever wire format is beneath it.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from uuid import uuid4

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from fetch_etl.local_stack import QueueUrls
from fetch_etl.resources.sqs import QueueError, SqsResource
from fetch_etl.resources.sqs_protocol import legacy_signature
from fetch_etl.resources.sqs_query import QuerySqsClient, UnreadableAnswerError
from fetch_etl_tests.helpers import closed_port, send, sqs_resource
from fetch_etl_tests.legacy_sqs import LegacySqsDouble

MARKER_BODY = '{"ip": "203.0.113.77", "device_id": "query-marker-5150"}'


def query_client(endpoint: str, max_attempts: int = 3) -> QuerySqsClient:
    return QuerySqsClient(
        endpoint_url=endpoint,
        region_name="us-east-1",
        credentials=Credentials("test", "test"),
        max_attempts=max_attempts,
        read_timeout=10,
    )


def without_metadata(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "ResponseMetadata"}


def test_queue_url_create_and_attributes_match_the_json_client(sqs_endpoint: str, sqs_client: Any) -> None:
    query = query_client(sqs_endpoint)
    name = f"qq-{uuid4().hex[:10]}"

    created = query.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "45"}, tags={"team": "data"})

    assert created["QueueUrl"] == sqs_client.get_queue_url(QueueName=name)["QueueUrl"]
    assert query.get_queue_url(QueueName=name)["QueueUrl"] == created["QueueUrl"]
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200 and created["ResponseMetadata"]["RequestId"]
    names = ["VisibilityTimeout", "ApproximateNumberOfMessages", "QueueArn"]
    ours = query.get_queue_attributes(QueueUrl=created["QueueUrl"], AttributeNames=names)
    theirs = sqs_client.get_queue_attributes(QueueUrl=created["QueueUrl"], AttributeNames=names)
    assert without_metadata(ours) == without_metadata(theirs)
    assert ours["Attributes"]["VisibilityTimeout"] == "45"
    assert sqs_client.list_queue_tags(QueueUrl=created["QueueUrl"])["Tags"] == {"team": "data"}
    query.delete_queue(QueueUrl=created["QueueUrl"])
    with pytest.raises(ClientError):
        sqs_client.get_queue_url(QueueName=name)


def test_send_and_receive_carry_bodies_system_and_message_attributes(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    query = query_client(sqs_endpoint)
    body = 'a & <b> "c" é ' + MARKER_BODY
    sent = query.send_message_batch(
        QueueUrl=queue_urls.queue_url,
        Entries=[
            {
                "Id": "0",
                "MessageBody": body,
                "MessageAttributes": {
                    "reason": {"DataType": "String", "StringValue": "field 'ip' is missing"},
                    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
                },
            },
            {"Id": "1", "MessageBody": "second"},
        ],
    )
    assert sent["Failed"] == [] and [ok["Id"] for ok in sent["Successful"]] == ["0", "1"]
    assert set(sent["Successful"][0]) == {"Id", "MessageId", "MD5OfMessageBody", "MD5OfMessageAttributes"}

    received = query.receive_message(
        QueueUrl=queue_urls.queue_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    by_id = {m["MessageId"]: m for m in received["Messages"]}
    first = by_id[sent["Successful"][0]["MessageId"]]
    assert first["Body"] == body
    assert set(first["Attributes"]) == {"SentTimestamp", "ApproximateReceiveCount"}
    assert first["MessageAttributes"] == {
        "reason": {"DataType": "String", "StringValue": "field 'ip' is missing"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
    }
    assert "MessageAttributes" not in by_id[sent["Successful"][1]["MessageId"]]

    again = sqs_client.receive_message(  # the same message through boto3's JSON client
        QueueUrl=queue_urls.queue_url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    json_first = next(m for m in again["Messages"] if m["MessageId"] == first["MessageId"])
    assert set(json_first) == set(first)
    for key in ("Body", "MD5OfBody", "MD5OfMessageAttributes", "MessageAttributes"):
        assert json_first[key] == first[key], key


def test_empty_receive_has_no_messages_key_like_boto3(sqs_endpoint: str, queue_urls: QueueUrls) -> None:
    response = query_client(sqs_endpoint).receive_message(QueueUrl=queue_urls.queue_url, WaitTimeSeconds=0)
    assert without_metadata(response) == {}


def test_batch_failures_have_boto3s_failed_shape(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls) -> None:
    query = query_client(sqs_endpoint)
    send(sqs_client, queue_urls.queue_url, ["one", "two"])
    handles = [
        m["ReceiptHandle"]
        for m in query.receive_message(QueueUrl=queue_urls.queue_url, MaxNumberOfMessages=10)["Messages"]
    ]

    changed = query.change_message_visibility_batch(
        QueueUrl=queue_urls.queue_url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": handles[0], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 0},
        ],
    )
    assert changed["Successful"] == [{"Id": "ok"}]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in changed["Failed"]] == [
        ("bad", "ReceiptHandleIsInvalid", True)
    ]

    deleted = query.delete_message_batch(
        QueueUrl=queue_urls.queue_url,
        Entries=[{"Id": "0", "ReceiptHandle": handles[1]}, {"Id": "1", "ReceiptHandle": "not-a-handle"}],
    )
    reference = sqs_client.delete_message_batch(
        QueueUrl=queue_urls.queue_url, Entries=[{"Id": "1", "ReceiptHandle": "not-a-handle"}]
    )
    assert deleted["Successful"] == [{"Id": "0"}]
    assert [set(f) for f in deleted["Failed"]] == [set(f) for f in reference["Failed"]]
    assert deleted["Failed"][0]["Code"] == reference["Failed"][0]["Code"] == "ReceiptHandleIsInvalid"


def test_missing_queue_is_a_client_error_shaped_like_boto3s(sqs_endpoint: str, sqs_client: Any) -> None:
    missing = f"{sqs_endpoint}/123456789012/no-such-queue-{uuid4().hex[:6]}"
    with pytest.raises(ClientError) as ours:
        query_client(sqs_endpoint).get_queue_attributes(QueueUrl=missing, AttributeNames=["All"])
    with pytest.raises(ClientError) as theirs:
        sqs_client.get_queue_attributes(QueueUrl=missing, AttributeNames=["All"])

    assert ours.value.operation_name == theirs.value.operation_name == "GetQueueAttributes"
    for key in ("Code", "QueryErrorCode", "Type"):
        assert ours.value.response["Error"][key] == theirs.value.response["Error"][key], key
    assert ours.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_resource_in_query_mode_names_a_missing_queue_in_one_sentence(sqs_endpoint: str, queue_urls: QueueUrls) -> None:
    missing = queue_urls.queue_url.rsplit("/", 1)[0] + "/no-such-login-queue"
    with pytest.raises(QueueError) as raised:
        sqs_resource(sqs_endpoint, queue_urls, queue_url=missing, protocol="query").depth()
    message = str(raised.value)
    assert missing in message and "AWS.SimpleQueueService.NonExistentQueue" in message
    assert "\n" not in message


def test_connection_failure_is_botocores_and_becomes_a_queue_error() -> None:
    port = closed_port()
    with pytest.raises(EndpointConnectionError):
        query_client(f"http://127.0.0.1:{port}", max_attempts=1).get_queue_url(QueueName="login-queue")

    queue_url = f"http://127.0.0.1:{port}/000000000000/login-queue"
    started = time.monotonic()
    with pytest.raises(QueueError) as raised:
        SqsResource(queue_url=queue_url, protocol="query", max_attempts=2).depth()
    assert f"endpoint http://127.0.0.1:{port}" in str(raised.value) and queue_url in str(raised.value)
    assert raised.value.__cause__ is None
    assert time.monotonic() - started < 10


def test_requests_are_sigv4_signed_form_posts(legacy_sqs: LegacySqsDouble, queue_urls: QueueUrls) -> None:
    query_client(legacy_sqs.endpoint).get_queue_attributes(
        QueueUrl=legacy_sqs.queue_url(queue_urls.queue_url), AttributeNames=["QueueArn"]
    )
    assert legacy_sqs.query_actions == ["GetQueueAttributes"]
    auth = legacy_sqs.last_authorization
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=test/") and "/us-east-1/sqs/aws4_request" in auth
    assert "SignedHeaders=" in auth and "Signature=" in auth


def test_throttling_and_5xx_are_retried_then_succeed(legacy_sqs: LegacySqsDouble, queue_urls: QueueUrls) -> None:
    throttled = b"<ErrorResponse><Error><Type>Sender</Type><Code>RequestThrottled</Code><Message>slow down</Message>"
    legacy_sqs.fail_next(1, status=503)
    legacy_sqs.fail_next(1, status=400, body=throttled + b"</Error></ErrorResponse>", content_type="text/xml")
    response = query_client(legacy_sqs.endpoint).get_queue_attributes(
        QueueUrl=legacy_sqs.queue_url(queue_urls.queue_url), AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert response["Attributes"] == {"ApproximateNumberOfMessages": "0"}
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert legacy_sqs.query_proxied == 3


def test_retries_stop_at_max_attempts_with_the_last_error(legacy_sqs: LegacySqsDouble, queue_urls: QueueUrls) -> None:
    legacy_sqs.fail_next(5, status=502)
    with pytest.raises(ClientError) as raised:
        query_client(legacy_sqs.endpoint, max_attempts=2).get_queue_attributes(
            QueueUrl=legacy_sqs.queue_url(queue_urls.queue_url)
        )
    assert raised.value.response["Error"] == {"Code": "502", "Message": "Bad Gateway"}
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert legacy_sqs.query_proxied == 2


def test_an_answer_that_is_not_xml_is_described_never_quoted(
    legacy_sqs: LegacySqsDouble, queue_urls: QueueUrls
) -> None:
    legacy_sqs.fail_next(1, status=200, body=MARKER_BODY.encode(), content_type="application/json")
    with pytest.raises(UnreadableAnswerError) as raised:
        query_client(legacy_sqs.endpoint).receive_message(QueueUrl=legacy_sqs.queue_url(queue_urls.queue_url))
    assert isinstance(raised.value, BotoCoreError)
    assert "ReceiveMessage answer is not XML (HTTP 200, application/json" in str(raised.value)
    assert "203.0.113.77" not in str(raised.value)


def test_debug_logs_name_actions_and_statuses_but_no_bodies(
    sqs_endpoint: str, queue_urls: QueueUrls, caplog: pytest.LogCaptureFixture
) -> None:
    query = query_client(sqs_endpoint)
    with caplog.at_level(logging.DEBUG):
        query.send_message_batch(QueueUrl=queue_urls.queue_url, Entries=[{"Id": "0", "MessageBody": MARKER_BODY}])
        query.receive_message(QueueUrl=queue_urls.queue_url, MessageAttributeNames=["All"])
    assert "SQS SendMessageBatch -> HTTP 200" in caplog.text and "SQS ReceiveMessage -> HTTP 200" in caplog.text
    assert "203.0.113.77" not in caplog.text and "query-marker-5150" not in caplog.text


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (500, "text/html; charset=utf-8", "HTTP 500"),
        (200, "text/xml", "an HTTP 200 text/xml answer"),
        (500, "application/x-amz-json-1.0", None),
        (400, "application/x-amz-json-1.0", None),
        (200, "application/x-amz-json-1.0", None),
        (503, "text/plain", None),
    ],
)
def test_what_counts_as_an_endpoint_that_rejects_json(status: int, content_type: str, expected: str | None) -> None:
    response = {"ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {"content-type": content_type}}}
    assert legacy_signature(response) == expected


def test_an_unknown_protocol_setting_is_one_sentence(sqs_endpoint: str, queue_urls: QueueUrls) -> None:
    with pytest.raises(QueueError, match=r"SQS_PROTOCOL must be one of auto, json, query \(got 'xml'\)"):
        sqs_resource(sqs_endpoint, queue_urls, protocol="xml").depth()
