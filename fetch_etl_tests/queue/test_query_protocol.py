"""botocore's query-protocol SQS client (the vendored model) against real servers: moto and LocalStack 1.0.4.

Every call SqsResource makes runs against both servers (`server` is parametrized); on moto, which speaks both
protocols, answers are also compared with boto3's JSON client. Faults neither server produces on demand
(throttling, 5xx, an answer that is not XML) come from the proxy in legacy_sqs.py in front of the real server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from fetch_etl.local.stack import QueueUrls
from fetch_etl.queue.client import legacy_signature
from fetch_etl.queue.messages import QueueError
from fetch_etl.queue.query import UnreadableAnswerError
from fetch_etl.queue.resource import SqsResource
from fetch_etl_tests.helpers import closed_port, send, sqs_resource
from fetch_etl_tests.legacy_sqs import LegacySqsDouble
from fetch_etl_tests.localstack_legacy import query_client

MARKER_BODY = '{"ip": "203.0.113.77", "device_id": "query-marker-5150"}'
SYSTEM_ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount"]
MESSAGE_ATTRIBUTES = {
    "reason": {"DataType": "String", "StringValue": "field 'ip' is missing"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
}


@dataclass(frozen=True)
class Server:
    name: str
    endpoint: str
    queues: QueueUrls
    admin: Any  # inspects state: boto3's JSON client on moto, the query client on LocalStack 1.0.4 (all it speaks)


@pytest.fixture(params=["moto", "localstack-1.0.4"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "moto":
        endpoint = request.getfixturevalue("sqs_endpoint")
        return Server("moto", endpoint, request.getfixturevalue("queue_urls"), request.getfixturevalue("sqs_client"))
    endpoint = request.getfixturevalue("localstack_legacy").endpoint
    return Server(request.param, endpoint, request.getfixturevalue("legacy_queue_urls"), query_client(endpoint))


@pytest.fixture
def proxy(server: Server) -> Iterator[LegacySqsDouble]:
    """The fault-injecting proxy in front of the server (passing JSON through: only query is used here)."""
    with LegacySqsDouble(server.endpoint, reject_json=False) as proxy:
        yield proxy


def without_metadata(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "ResponseMetadata"}


def receive_all(client: Any, queue_url: str, count: int, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Receive until `count` distinct messages arrived (a receive may return fewer than there are); by MessageId."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while len(found) < count and time.monotonic() < deadline:
        response = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, **kwargs)
        found |= {m["MessageId"]: m for m in response.get("Messages", [])}
    assert len(found) == count, f"received {len(found)} of {count}"
    return found


def test_the_resources_query_client_is_botocores_with_the_json_clients_settings(
    sqs_endpoint: str, queue_urls: QueueUrls
) -> None:
    settings = {"max_attempts": 4, "wait_time_seconds": 25, "receive_threads": 12}
    json_client = sqs_resource(sqs_endpoint, queue_urls, protocol="json", **settings).client()
    query = sqs_resource(sqs_endpoint, queue_urls, protocol="query", **settings).client()

    assert isinstance(query, BaseClient) and query.meta.service_model.protocol == "query"
    assert json_client.meta.service_model.protocol == "json"
    assert boto3.session.Session().client("sqs", region_name="us-east-1").meta.service_model.protocol == "json"
    for option in ("retries", "connect_timeout", "read_timeout", "max_pool_connections"):
        assert getattr(query.meta.config, option) == getattr(json_client.meta.config, option), option
    assert query.meta.config.retries["mode"] == "standard"
    assert query.meta.config.read_timeout == 35 and query.meta.config.max_pool_connections == 2 * 12 + 1
    assert (query.meta.endpoint_url, query.meta.region_name) == (sqs_endpoint, "us-east-1")
    assert query.get_queue_url(QueueName=queue_urls.queue_url.rsplit("/", 1)[1])["QueueUrl"] == queue_urls.queue_url


def test_create_queue_get_queue_url_and_attributes(server: Server) -> None:
    query = query_client(server.endpoint)
    name = f"qq-{uuid4().hex[:10]}"

    created = query.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "45"}, tags={"team": "data"})

    assert query.get_queue_url(QueueName=name)["QueueUrl"] == created["QueueUrl"]
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200 and created["ResponseMetadata"]["RequestId"]
    names = ["VisibilityTimeout", "ApproximateNumberOfMessages", "QueueArn"]
    attributes = query.get_queue_attributes(QueueUrl=created["QueueUrl"], AttributeNames=names)["Attributes"]
    assert set(attributes) == set(names) and attributes["VisibilityTimeout"] == "45"
    assert attributes["QueueArn"].endswith(f":{name}")
    assert server.admin.list_queue_tags(QueueUrl=created["QueueUrl"])["Tags"] == {"team": "data"}
    query.delete_queue(QueueUrl=created["QueueUrl"])
    with pytest.raises(query.exceptions.QueueDoesNotExist):
        query.get_queue_url(QueueName=name)


def test_send_and_receive_carry_bodies_system_and_string_and_binary_attributes(server: Server) -> None:
    query = query_client(server.endpoint)
    body = 'a & <b> "c" é ' + MARKER_BODY
    entries = [
        {"Id": "0", "MessageBody": body, "MessageAttributes": MESSAGE_ATTRIBUTES},
        {"Id": "1", "MessageBody": "2"},
    ]

    sent = query.send_message_batch(QueueUrl=server.queues.queue_url, Entries=entries)

    assert "Failed" not in sent or sent["Failed"] == []
    assert sorted(ok["Id"] for ok in sent["Successful"]) == ["0", "1"]
    ok = {entry["Id"]: entry for entry in sent["Successful"]}
    assert set(ok["0"]) == {"Id", "MessageId", "MD5OfMessageBody", "MD5OfMessageAttributes"}
    received = receive_all(
        query,
        server.queues.queue_url,
        2,
        MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,  # the vendored model's one patch
        MessageAttributeNames=["All"],
    )
    first, second = received[ok["0"]["MessageId"]], received[ok["1"]["MessageId"]]
    assert first["Body"] == body and second["Body"] == "2"
    assert set(first["Attributes"]) == set(SYSTEM_ATTRIBUTES) and first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert first["MessageAttributes"] == MESSAGE_ATTRIBUTES
    assert first["MD5OfMessageAttributes"] == ok["0"]["MD5OfMessageAttributes"]
    assert "MessageAttributes" not in second


def test_answers_have_the_json_clients_shapes(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls) -> None:
    """On moto, which speaks both: the same state read over query and over JSON gives the same dicts."""
    query = query_client(sqs_endpoint)
    names = ["VisibilityTimeout", "ApproximateNumberOfMessages", "QueueArn"]
    ours = query.get_queue_attributes(QueueUrl=queue_urls.queue_url, AttributeNames=names)
    assert without_metadata(ours) == without_metadata(
        sqs_client.get_queue_attributes(QueueUrl=queue_urls.queue_url, AttributeNames=names)
    )
    query.send_message_batch(
        QueueUrl=queue_urls.queue_url,
        Entries=[{"Id": "0", "MessageBody": "x", "MessageAttributes": MESSAGE_ATTRIBUTES}],
    )
    kwargs: dict[str, Any] = {"MessageSystemAttributeNames": SYSTEM_ATTRIBUTES, "MessageAttributeNames": ["All"]}
    (over_query,) = query.receive_message(QueueUrl=queue_urls.queue_url, VisibilityTimeout=0, **kwargs)["Messages"]
    (over_json,) = sqs_client.receive_message(QueueUrl=queue_urls.queue_url, **kwargs)["Messages"]
    assert set(over_json) == set(over_query)
    for key in ("Body", "MD5OfBody", "MD5OfMessageAttributes", "MessageAttributes"):
        assert over_json[key] == over_query[key], key
    bad = [{"Id": "1", "ReceiptHandle": "not-a-handle"}]
    ours_failed = query.delete_message_batch(QueueUrl=queue_urls.queue_url, Entries=bad)["Failed"]
    theirs_failed = sqs_client.delete_message_batch(QueueUrl=queue_urls.queue_url, Entries=bad)["Failed"]
    assert ours_failed == theirs_failed


def test_empty_receive_has_no_messages_key_like_boto3(server: Server) -> None:
    response = query_client(server.endpoint).receive_message(QueueUrl=server.queues.queue_url, WaitTimeSeconds=0)
    assert without_metadata(response) == {}


def test_batch_failures_have_boto3s_failed_shape(server: Server) -> None:
    query = query_client(server.endpoint)
    send(server.admin, server.queues.queue_url, ["one", "two"])
    handles = [m["ReceiptHandle"] for m in receive_all(query, server.queues.queue_url, 2).values()]

    changed = query.change_message_visibility_batch(
        QueueUrl=server.queues.queue_url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": handles[0], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 0},
        ],
    )
    deleted = query.delete_message_batch(
        QueueUrl=server.queues.queue_url,
        Entries=[{"Id": "0", "ReceiptHandle": handles[1]}, {"Id": "1", "ReceiptHandle": "not-a-handle"}],
    )

    assert changed["Successful"] == [{"Id": "ok"}] and deleted["Successful"] == [{"Id": "0"}]
    for failed, bad_id in ((changed["Failed"], "bad"), (deleted["Failed"], "1")):
        (failure,) = failed
        assert set(failure) == {"Id", "SenderFault", "Code", "Message"}
        assert (failure["Id"], failure["Code"]) == (bad_id, "ReceiptHandleIsInvalid")


def test_a_missing_queue_is_the_modeled_queue_does_not_exist(server: Server, sqs_client: Any) -> None:
    query = query_client(server.endpoint)
    missing = server.queues.queue_url.rsplit("/", 1)[0] + f"/no-such-queue-{uuid4().hex[:6]}"

    with pytest.raises(query.exceptions.QueueDoesNotExist) as by_url:
        query.get_queue_attributes(QueueUrl=missing, AttributeNames=["All"])
    with pytest.raises(query.exceptions.QueueDoesNotExist) as by_name:
        query.get_queue_url(QueueName=missing.rsplit("/", 1)[1])

    for raised in (by_url, by_name):
        assert raised.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as over_json:  # boto3's JSON client names the same modeled error
        sqs_client.get_queue_url(QueueName=missing.rsplit("/", 1)[1])
    assert type(over_json.value).__name__ == type(by_name.value).__name__ == "QueueDoesNotExist"


def test_resource_in_query_mode_names_a_missing_queue_in_one_sentence(server: Server) -> None:
    missing = server.queues.queue_url.rsplit("/", 1)[0] + "/no-such-login-queue"
    with pytest.raises(QueueError) as raised:
        sqs_resource(server.endpoint, server.queues, queue_url=missing, protocol="query").depth()
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


def test_requests_are_sigv4_signed_form_posts(server: Server, proxy: LegacySqsDouble) -> None:
    query_client(proxy.endpoint).get_queue_attributes(
        QueueUrl=proxy.queue_url(server.queues.queue_url), AttributeNames=["QueueArn"]
    )
    assert proxy.query_actions == ["GetQueueAttributes"] and proxy.json_requests == 0
    auth = proxy.last_authorization
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=test/") and "/us-east-1/sqs/aws4_request" in auth
    assert "SignedHeaders=" in auth and "Signature=" in auth


def test_throttling_and_5xx_are_retried_then_succeed(server: Server, proxy: LegacySqsDouble) -> None:
    throttled = b"<ErrorResponse><Error><Type>Sender</Type><Code>RequestThrottled</Code><Message>slow down</Message>"
    proxy.fail_next(1, status=503)
    proxy.fail_next(1, status=400, body=throttled + b"</Error></ErrorResponse>", content_type="text/xml")
    response = query_client(proxy.endpoint).get_queue_attributes(
        QueueUrl=proxy.queue_url(server.queues.queue_url), AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert response["Attributes"] == {"ApproximateNumberOfMessages": "0"}
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert proxy.query_proxied == 3


def test_retries_stop_at_max_attempts_with_the_last_error(server: Server, proxy: LegacySqsDouble) -> None:
    proxy.fail_next(5, status=502)
    with pytest.raises(ClientError) as raised:
        query_client(proxy.endpoint, max_attempts=2).get_queue_attributes(
            QueueUrl=proxy.queue_url(server.queues.queue_url)
        )
    assert raised.value.response["Error"] == {"Code": "502", "Message": "Bad Gateway"}
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert proxy.query_proxied == 2


def test_an_answer_that_is_not_xml_is_described_never_quoted(
    legacy_sqs: LegacySqsDouble, queue_urls: QueueUrls
) -> None:
    """botocore's own parse error quotes the whole body; the query session's parser names size and type only."""
    via_proxy = QueueUrls(legacy_sqs.queue_url(queue_urls.queue_url), legacy_sqs.queue_url(queue_urls.dlq_url))
    legacy_sqs.fail_next(2, status=200, body=MARKER_BODY.encode(), content_type="application/json")

    with pytest.raises(UnreadableAnswerError) as raised:
        query_client(legacy_sqs.endpoint).receive_message(QueueUrl=via_proxy.queue_url)
    with pytest.raises(QueueError) as as_queue_error:
        sqs_resource(legacy_sqs.endpoint, via_proxy, protocol="query").receive()

    assert isinstance(raised.value, BotoCoreError)
    assert "ReceiveMessage answer is not XML (HTTP 200, application/json, 56 bytes)" in str(raised.value)
    assert "ReceiveMessage answer is not XML" in str(as_queue_error.value)
    for text in (str(raised.value), str(as_queue_error.value)):
        assert "203.0.113.77" not in text and "query-marker-5150" not in text


def test_debug_logs_carry_no_bodies(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    # botocore's own level too: an earlier in-process CLI test may have left it at WARNING (cli logging setup).
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="botocore"):
        sqs = sqs_resource(server.endpoint, server.queues, protocol="query", receive_threads=1)
        sqs.send_bodies([MARKER_BODY])
        (message,) = sqs.receive()
        sqs.release()
    assert message.body == MARKER_BODY
    assert any(r.name.startswith("botocore") and r.levelno == logging.DEBUG for r in caplog.records)
    assert "203.0.113.77" not in caplog.text and "query-marker-5150" not in caplog.text


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (500, "text/xml", "HTTP 500"),  # LocalStack 1.0.4's InternalError answer
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
