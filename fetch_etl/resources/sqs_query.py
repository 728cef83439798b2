"""SQS over the older query protocol (form-encoded POST, XML answers), for endpoints that predate JSON.

boto3 >= 1.28.82 only speaks SQS's JSON protocol; the LocalStack release in Fetch's reference image only
speaks query and answers JSON with HTTP 500. `QuerySqsClient` has the boto3 client's method names and
returns the same dict shapes for every call `SqsResource` makes, so one interface serves both wire formats.
Requests are SigV4-signed by botocore; failures are raised as botocore's own exceptions (`ClientError`
with the same `Error`/`ResponseMetadata` structure, `BotoCoreError` subclasses for the connection), so
callers handle both protocols alike. Nothing here logs or raises a message body: at most action names and
HTTP status codes.
"""

from __future__ import annotations

import base64
import http.client
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, NoCredentialsError
from botocore.httpsession import URLLib3Session

log = logging.getLogger(__name__)

API_VERSION = "2012-11-05"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# botocore's "standard" retry mode, which the JSON client uses: which answers are worth another attempt.
RETRY_STATUS = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "AWS.SimpleQueueService.RequestThrottled",
    }
)
MAX_BACKOFF_SECONDS = 20.0
# boto3's JSON path reports the query code as `Code` and the JSON error name as `QueryErrorCode`; do the same.
JSON_ERROR_NAMES = {
    "AWS.SimpleQueueService.NonExistentQueue": "QueueDoesNotExist",
    "AWS.SimpleQueueService.QueueDeletedRecently": "QueueDeletedRecently",
    "QueueAlreadyExists": "QueueNameExists",
    "AWS.SimpleQueueService.PurgeQueueInProgress": "PurgeQueueInProgress",
    "AWS.SimpleQueueService.EmptyBatchRequest": "EmptyBatchRequest",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest": "TooManyEntriesInBatchRequest",
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct": "BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.BatchRequestTooLong": "BatchRequestTooLong",
    "AWS.SimpleQueueService.InvalidBatchEntryId": "InvalidBatchEntryId",
}


class UnreadableAnswerError(BotoCoreError):
    """An answer that is not the XML the query protocol promises; described by size and type, never quoted."""

    fmt = "{detail}"


def _local(tag: str) -> str:
    """An element's name without its XML namespace."""
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element | None, name: str) -> list[ET.Element]:
    return [] if elem is None else [child for child in elem if _local(child.tag) == name]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    found = _children(elem, name)
    return found[0] if found else None


def _text(elem: ET.Element | None, name: str) -> str | None:
    child = _child(elem, name)
    return None if child is None else (child.text or "")


def _find_deep(elem: ET.Element, name: str) -> ET.Element | None:
    return next((e for e in elem.iter() if _local(e.tag) == name), None)


def _name_values(elem: ET.Element | None, entry: str) -> dict[str, str]:
    """`<Attribute><Name>..</Name><Value>..</Value></Attribute>` entries as a dict."""
    return {_text(e, "Name") or "": _text(e, "Value") or "" for e in _children(elem, entry)}


def _message_attributes(elem: ET.Element) -> dict[str, dict[str, Any]]:
    """`<MessageAttribute>` entries in boto3's shape: name -> {DataType, StringValue | BinaryValue}."""
    result: dict[str, dict[str, Any]] = {}
    for attr in _children(elem, "MessageAttribute"):
        value = _child(attr, "Value")
        shaped: dict[str, Any] = {"DataType": _text(value, "DataType") or "String"}
        if (string := _text(value, "StringValue")) is not None:
            shaped["StringValue"] = string
        if (binary := _text(value, "BinaryValue")) is not None:
            shaped["BinaryValue"] = base64.b64decode(binary)
        result[_text(attr, "Name") or ""] = shaped
    return result


def _batch_result(result: ET.Element | None, ok_entry: str, ok_fields: Sequence[str]) -> dict[str, Any]:
    """`Successful` / `Failed` lists of a batch call, as boto3 returns them."""
    successful = [{f: v for f in ok_fields if (v := _text(e, f)) is not None} for e in _children(result, ok_entry)]
    failed = []
    for e in _children(result, "BatchResultErrorEntry"):
        entry: dict[str, Any] = {"Id": _text(e, "Id") or "", "SenderFault": _text(e, "SenderFault") == "true"}
        entry["Code"] = _text(e, "Code") or ""
        if (message := _text(e, "Message")) is not None:
            entry["Message"] = message
        failed.append(entry)
    return {"Successful": successful, "Failed": failed}


def _attribute_params(prefix: str, attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """MessageAttributes in query form: `<prefix>.N.Name`, `.Value.DataType`, `.Value.StringValue`..."""
    params: dict[str, str] = {}
    for n, (name, value) in enumerate(attributes.items(), start=1):
        params[f"{prefix}.{n}.Name"] = name
        params[f"{prefix}.{n}.Value.DataType"] = str(value["DataType"])
        if "StringValue" in value:
            params[f"{prefix}.{n}.Value.StringValue"] = str(value["StringValue"])
        if "BinaryValue" in value:
            raw = value["BinaryValue"]
            raw = raw.encode() if isinstance(raw, str) else bytes(raw)
            params[f"{prefix}.{n}.Value.BinaryValue"] = base64.b64encode(raw).decode("ascii")
    return params


def _numbered(prefix: str, values: Iterable[str]) -> dict[str, str]:
    return {f"{prefix}.{n}": str(v) for n, v in enumerate(values, start=1)}


class QuerySqsClient:
    """The subset of boto3's SQS client that fetch-etl uses, over the query protocol.

    Thread-safe like a boto3 client (one urllib3 pool, no per-call state), so the resource's parallel
    deletes and sends can share it.
    """

    def __init__(
        self,
        *,
        endpoint_url: str,
        region_name: str,
        credentials: Credentials | None,
        verify: bool | str | None = True,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 5,
        max_pool_connections: int = 10,
    ) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.region_name = region_name
        self._credentials = credentials
        self._max_attempts = max(1, max_attempts)
        self._http = URLLib3Session(
            verify=True if verify is None else verify,
            timeout=(connect_timeout, read_timeout),
            max_pool_connections=max_pool_connections,
        )

    # --- the calls SqsResource makes ----------------------------------------------------------------

    def get_queue_url(self, *, QueueName: str, QueueOwnerAWSAccountId: str | None = None) -> dict[str, Any]:
        params = {"QueueName": QueueName}
        if QueueOwnerAWSAccountId:
            params["QueueOwnerAWSAccountId"] = QueueOwnerAWSAccountId
        result, meta = self._request("GetQueueUrl", params)
        return {"QueueUrl": _text(result, "QueueUrl") or "", "ResponseMetadata": meta}

    def create_queue(
        self, *, QueueName: str, Attributes: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        params = {"QueueName": QueueName}
        for n, (name, value) in enumerate((Attributes or {}).items(), start=1):
            params |= {f"Attribute.{n}.Name": name, f"Attribute.{n}.Value": str(value)}
        for n, (key, value) in enumerate((tags or {}).items(), start=1):
            params |= {f"Tag.{n}.Key": key, f"Tag.{n}.Value": str(value)}
        result, meta = self._request("CreateQueue", params)
        return {"QueueUrl": _text(result, "QueueUrl") or "", "ResponseMetadata": meta}

    def delete_queue(self, *, QueueUrl: str) -> dict[str, Any]:
        _result, meta = self._request("DeleteQueue", {"QueueUrl": QueueUrl})
        return {"ResponseMetadata": meta}

    def get_queue_attributes(self, *, QueueUrl: str, AttributeNames: Sequence[str] = ("All",)) -> dict[str, Any]:
        params = {"QueueUrl": QueueUrl, **_numbered("AttributeName", AttributeNames)}
        result, meta = self._request("GetQueueAttributes", params)
        attributes = _name_values(result, "Attribute")
        return {"Attributes": attributes, "ResponseMetadata": meta} if attributes else {"ResponseMetadata": meta}

    def receive_message(
        self,
        *,
        QueueUrl: str,
        MaxNumberOfMessages: int | None = None,
        WaitTimeSeconds: int | None = None,
        VisibilityTimeout: int | None = None,
        AttributeNames: Sequence[str] = (),
        MessageSystemAttributeNames: Sequence[str] = (),
        MessageAttributeNames: Sequence[str] = (),
        ReceiveRequestAttemptId: str | None = None,
    ) -> dict[str, Any]:
        # `AttributeName.N` is the spelling every query-protocol server knows, old LocalStack included;
        # it asks for system attributes just as the newer `MessageSystemAttributeName.N` does.
        system = list(dict.fromkeys([*AttributeNames, *MessageSystemAttributeNames]))
        params: dict[str, str] = {"QueueUrl": QueueUrl}
        optional = {
            "MaxNumberOfMessages": MaxNumberOfMessages,
            "WaitTimeSeconds": WaitTimeSeconds,
            "VisibilityTimeout": VisibilityTimeout,
            "ReceiveRequestAttemptId": ReceiveRequestAttemptId,
        }
        params |= {key: str(value) for key, value in optional.items() if value is not None}
        params |= _numbered("AttributeName", system) | _numbered("MessageAttributeName", MessageAttributeNames)
        result, meta = self._request("ReceiveMessage", params)
        messages = []
        for elem in _children(result, "Message"):
            message: dict[str, Any] = {
                field: value
                for field in ("MessageId", "ReceiptHandle", "MD5OfBody", "Body", "MD5OfMessageAttributes")
                if (value := _text(elem, field)) is not None
            }
            if attributes := _name_values(elem, "Attribute"):
                message["Attributes"] = attributes
            if message_attributes := _message_attributes(elem):
                message["MessageAttributes"] = message_attributes
            messages.append(message)
        return {"Messages": messages, "ResponseMetadata": meta} if messages else {"ResponseMetadata": meta}

    def send_message_batch(self, *, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        params: dict[str, str] = {"QueueUrl": QueueUrl}
        for n, entry in enumerate(Entries, start=1):
            prefix = f"SendMessageBatchRequestEntry.{n}"
            params[f"{prefix}.Id"] = str(entry["Id"])
            params[f"{prefix}.MessageBody"] = str(entry["MessageBody"])
            for key in ("DelaySeconds", "MessageDeduplicationId", "MessageGroupId"):
                if entry.get(key) is not None:
                    params[f"{prefix}.{key}"] = str(entry[key])
            params |= _attribute_params(f"{prefix}.MessageAttribute", entry.get("MessageAttributes") or {})
        result, meta = self._request("SendMessageBatch", params)
        fields = ("Id", "MessageId", "MD5OfMessageBody", "MD5OfMessageAttributes", "SequenceNumber")
        return {**_batch_result(result, "SendMessageBatchResultEntry", fields), "ResponseMetadata": meta}

    def delete_message_batch(self, *, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        params: dict[str, str] = {"QueueUrl": QueueUrl}
        for n, entry in enumerate(Entries, start=1):
            params[f"DeleteMessageBatchRequestEntry.{n}.Id"] = str(entry["Id"])
            params[f"DeleteMessageBatchRequestEntry.{n}.ReceiptHandle"] = str(entry["ReceiptHandle"])
        result, meta = self._request("DeleteMessageBatch", params)
        return {**_batch_result(result, "DeleteMessageBatchResultEntry", ("Id",)), "ResponseMetadata": meta}

    def change_message_visibility_batch(self, *, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        params: dict[str, str] = {"QueueUrl": QueueUrl}
        for n, entry in enumerate(Entries, start=1):
            prefix = f"ChangeMessageVisibilityBatchRequestEntry.{n}"
            params[f"{prefix}.Id"] = str(entry["Id"])
            params[f"{prefix}.ReceiptHandle"] = str(entry["ReceiptHandle"])
            params[f"{prefix}.VisibilityTimeout"] = str(entry["VisibilityTimeout"])
        result, meta = self._request("ChangeMessageVisibilityBatch", params)
        entries = "ChangeMessageVisibilityBatchResultEntry"
        return {**_batch_result(result, entries, ("Id",)), "ResponseMetadata": meta}

    def close(self) -> None:
        self._http.close()

    # --- the wire ------------------------------------------------------------------------------------

    def _request(self, action: str, params: Mapping[str, str]) -> tuple[ET.Element | None, dict[str, Any]]:
        """POST one action with retries like botocore's standard mode; returns (<ActionResult>, metadata)."""
        attempt = 0
        while True:
            throttled = False
            try:
                response = self._send(action, params)
                status = response.status_code
                if status < 300:
                    root = self._parse(action, response)
                    return _child(root, f"{action}Result"), self._metadata(root, response, attempt)
                error = self._client_error(action, response, attempt)
                code = error.response["Error"]["Code"]
                throttled = code in THROTTLING_CODES
                retryable = throttled or status in RETRY_STATUS or code in TRANSIENT_CODES
                failure: Exception = error
            except (ConnectionError, HTTPClientError) as exc:
                retryable, failure = True, exc
            attempt += 1
            if not retryable or attempt >= self._max_attempts:
                raise failure
            scale = 1.0 if throttled else 0.05
            delay = random.random() * min(scale * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            log.debug("SQS %s attempt %d failed (%s); retry in %.2fs", action, attempt, type(failure).__name__, delay)
            time.sleep(delay)

    def _send(self, action: str, params: Mapping[str, str]) -> AWSResponse:
        if self._credentials is None:
            raise NoCredentialsError()
        body = urlencode({"Action": action, "Version": API_VERSION, **params})
        request = AWSRequest(
            method="POST", url=f"{self.endpoint_url}/", data=body.encode(), headers={"Content-Type": CONTENT_TYPE}
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), "sqs", self.region_name).add_auth(request)
        response = self._http.send(request.prepare())
        log.debug("SQS %s -> HTTP %d", action, response.status_code)
        return response

    @staticmethod
    def _parse(action: str, response: AWSResponse) -> ET.Element:
        """The XML document of a successful answer; an unparseable one is described, never quoted."""
        try:
            return ET.fromstring(response.content)
        except ET.ParseError:
            kind = response.headers.get("content-type", "no content-type")
            raise UnreadableAnswerError(
                detail=f"the {action} answer is not XML (HTTP {response.status_code}, {kind}, "
                f"{len(response.content)} bytes)"
            ) from None

    @staticmethod
    def _metadata(root: ET.Element | None, response: AWSResponse, attempt: int) -> dict[str, Any]:
        request_id = _find_deep(root, "RequestId") if root is not None else None
        return {
            "RequestId": (request_id.text or "") if request_id is not None else "",
            "HTTPStatusCode": response.status_code,
            "HTTPHeaders": {k.lower(): v for k, v in response.headers.items()},
            "RetryAttempts": attempt,
        }

    def _client_error(self, action: str, response: AWSResponse, attempt: int) -> ClientError:
        """`<ErrorResponse><Error><Code>` as botocore's ClientError; a non-XML error by its status only."""
        try:
            root: ET.Element | None = ET.fromstring(response.content)
        except ET.ParseError:
            root = None
        error_elem = _find_deep(root, "Error") if root is not None else None
        if error_elem is not None:
            error = {
                "Code": _text(error_elem, "Code") or str(response.status_code),
                "Message": _text(error_elem, "Message") or "",
            }
            if json_name := JSON_ERROR_NAMES.get(error["Code"]):
                error["QueryErrorCode"] = json_name
            if kind := _text(error_elem, "Type"):
                error["Type"] = kind
        else:  # what botocore does with an error body it cannot read
            error = {"Code": str(response.status_code), "Message": http.client.responses.get(response.status_code, "")}
        return ClientError({"Error": error, "ResponseMetadata": self._metadata(root, response, attempt)}, action)
