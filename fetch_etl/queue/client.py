"""The SQS client behind `SqsResource.client()`: boto3's over JSON, boto3's over query (sqs_query), or `auto`.

`auto` speaks JSON until an endpoint answers like the 2022 LocalStack in Fetch's reference image, which
answers JSON-protocol requests with HTTP 500 (current boto3 speaks nothing else). The choice is remembered
per endpoint for the rest of the process, so the sensor's ticks and every step of a run pay for the
discovery at most once. Both are boto3 clients built by one function from the same settings (endpoint,
region, credentials, retries, timeouts); only their session's SQS model differs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fetch_etl.queue.query import check_query_client, query_session

log = logging.getLogger("fetch_etl.queue.resource")
PROTOCOLS = ("auto", "json", "query")
# What `auto` learned each endpoint speaks, for the rest of the process.
_protocol_by_endpoint: dict[str, str] = {}
_protocol_lock = threading.Lock()
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "localstack"}


class ClientSettings(Protocol):
    """What a client is built from: the fields of `SqsResource` (queue/resource.py) this module reads."""

    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None
    profile_name: str | None
    max_attempts: int
    use_ssl: bool
    verify: bool | None
    wait_time_seconds: int
    receive_threads: int
    delete_threads: int

    def effective_endpoint(self) -> str | None: ...


def learned_protocol(endpoint_key: str) -> str | None:
    """The protocol `auto` settled on for an endpoint in this process, if it has yet."""
    return _protocol_by_endpoint.get(endpoint_key)


def _content_type(response: dict[str, Any]) -> str:
    return str(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("content-type", "")).lower()


def legacy_signature(response: dict[str, Any]) -> str | None:
    """How an answer to a JSON request shows an endpoint that only speaks query (old LocalStack), else None."""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    content_type = _content_type(response)
    if "json" in content_type:
        return None
    if status in (500, 501):
        return f"HTTP {status}"
    if "xml" in content_type or "html" in content_type:
        return f"an HTTP {status} {content_type.split(';')[0]} answer"
    return None


class AutoProtocolClient:
    """boto3's JSON client until the endpoint proves it speaks only query; then the query client, process-wide.

    The first answer decides: a JSON answer settles on JSON; HTTP 500 (or an XML/HTML answer) to a JSON
    request settles on query, logs one line and repeats that call over query. Connection failures
    decide nothing. Query works on AWS and every LocalStack, so a false alarm costs nothing but the line.
    Until it is decided, calls go out once, without retries (`probe_client`): retrying the old LocalStack's
    HTTP 500 with backoff cost every run process ~1.1 s before its first message. A call that fails without
    deciding is made again by the JSON client, with the configured retries.
    """

    def __init__(self, endpoint_key: str, probe_client: Any, make_client: Callable[[str], Any]) -> None:
        self.endpoint_key = endpoint_key
        self._probe = probe_client
        self._make_client = make_client  # "json" or "query" -> that protocol's client, built on first use
        self._clients: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda **kwargs: self._dispatch(name, kwargs)

    def _call(self, protocol: str, name: str, kwargs: dict[str, Any]) -> Any:
        with _protocol_lock:
            if protocol not in self._clients:
                self._clients[protocol] = self._make_client(protocol)
            client = self._clients[protocol]
        return getattr(client, name)(**kwargs)

    def _dispatch(self, name: str, kwargs: dict[str, Any]) -> Any:
        learned = _protocol_by_endpoint.get(self.endpoint_key)
        if learned is not None:
            return self._call(learned, name, kwargs)
        try:
            response = getattr(self._probe, name)(**kwargs)
        except ClientError as err:
            if (signature := legacy_signature(err.response)) is None:
                self._learn("json", None)
                return self._call("json", name, kwargs)  # with its retries, as for any call
        except BotoCoreError:
            return self._call("json", name, kwargs)  # no answer decides nothing
        else:
            if (signature := legacy_signature(response)) is None:
                self._learn("json", None)
                return response
        self._learn("query", f"answered a JSON-protocol {name} request with {signature}")
        return self._call("query", name, kwargs)

    def _learn(self, protocol: str, why: str | None) -> None:
        with _protocol_lock:
            if self.endpoint_key in _protocol_by_endpoint:
                return
            _protocol_by_endpoint[self.endpoint_key] = protocol
        if why is not None:
            log.warning(
                "SQS endpoint %s %s: it speaks only the older query protocol, so fetch-etl uses query "
                "for the rest of this process (SQS_PROTOCOL=auto; set query to skip this check)",
                self.endpoint_key,
                why,
            )


def make_client(settings: ClientSettings, protocol: str, endpoint_key: str, region: str) -> Any:
    """The client for `protocol` (already validated): boto3's JSON or query client, or AutoProtocolClient."""
    if protocol == "json":
        return _json_client(settings, region)
    if protocol == "query":
        return _query_client(settings, region)
    # One session for both JSON clients (the one-attempt probe and the one with retries): with its model
    # already loaded the second takes ~3 ms, where a new session costs ~80 ms in every run process.
    session = boto3.session.Session(profile_name=settings.profile_name)

    def build(chosen: str) -> Any:
        return _client(settings, region, session) if chosen == "json" else _query_client(settings, region)

    return AutoProtocolClient(endpoint_key, _client(settings, region, session, max_attempts=1), build)


def pool_size(settings: ClientSettings) -> int:
    """HTTP connections to keep, so no thread waits for one: the receivers, the heartbeat's calls (as wide as
    the receivers while they run, sqs_heartbeat) and the deleters."""
    return max(10, 2 * settings.receive_threads + settings.delete_threads)


def _credentials(settings: ClientSettings, session: boto3.session.Session) -> dict[str, str]:
    """Explicit keys, else none (boto3's chain), else test/test for a loopback emulator."""
    endpoint = settings.effective_endpoint()
    credentials: dict[str, str | None] = {
        "aws_access_key_id": settings.aws_access_key_id,
        "aws_secret_access_key": settings.aws_secret_access_key,
        "aws_session_token": settings.aws_session_token,
    }
    if endpoint and urlsplit(endpoint).hostname in _LOOPBACK_HOSTS and session.get_credentials() is None:
        # Local emulators accept any credentials; a fresh laptop has none configured.
        credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return {k: v for k, v in credentials.items() if v}


def _json_client(settings: ClientSettings, region: str) -> Any:
    return _client(settings, region, boto3.session.Session(profile_name=settings.profile_name))


def _query_client(settings: ClientSettings, region: str) -> Any:
    return check_query_client(_client(settings, region, query_session(settings.profile_name)))


def _client(
    settings: ClientSettings, region: str, session: boto3.session.Session, max_attempts: int | None = None
) -> Any:
    """One SQS client from the resource's settings (`max_attempts` overrides theirs); the session decides the
    wire protocol."""
    config = Config(
        retries={"max_attempts": max_attempts or settings.max_attempts, "mode": "standard"},
        max_pool_connections=pool_size(settings),
        connect_timeout=5,
        read_timeout=max(30, settings.wait_time_seconds + 10),
    )
    return session.client(
        "sqs",
        region_name=region,
        endpoint_url=settings.effective_endpoint(),
        use_ssl=settings.use_ssl,
        verify=settings.verify,
        config=config,
        **_credentials(settings, session),
    )
