"""Shared test helpers: build the real resources against the test servers and run the assets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import psutil
import psycopg
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from fetch_etl.defs.assets import masked_logins, raw_login_messages, user_logins
from fetch_etl.defs.io_managers import batch_io_manager
from fetch_etl.defs.resources import masking_from_env, postgres_from_env, sqs_from_env
from fetch_etl.local.stack import QueueUrls
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.queue.resource import SqsResource

TEST_KEY_HEX = "0f" * 32
FOO_BAR = '{"foo": "oops_wrong_msg_type", "bar": "123"}'  # the reference traffic's non-login message
NOT_JSON = "this is {not json"
ASSETS = [raw_login_messages, masked_logins, user_logins]


def resource_env(
    endpoint: str, queues: QueueUrls, database_url: str = "", *, key: str = TEST_KEY_HEX, mode: str = "hmac"
) -> dict[str, str]:
    """The test servers as the pipeline's variables: the resources below are built from them through the one
    env -> resource map (defs/resources.py), as every run builds its own."""
    return pipeline_env(
        endpoint,
        queues,
        database_url,
        SQS_VISIBILITY_TIMEOUT="30",
        # moto's receive is unlocked too: parallel receives can hand out a message twice or end a drain with
        # one still visible (seen in CI: 41 and 35 of 42 received). Tests that exercise parallel receivers
        # say so with receive_threads=N; the rest must not depend on that race. (SQS_DELETE_THREADS=1: see
        # pipeline_env.)
        SQS_RECEIVE_THREADS="1",
        PII_MASKING_KEY=key,
        PII_MASKING_MODE=mode,
    )


def sqs_resource(endpoint: str, queues: QueueUrls, **overrides: Any) -> SqsResource:
    """The `sqs` resource of the test servers; `overrides` set fields directly (no long poll: it has no variable)."""
    return sqs_from_env(resource_env(endpoint, queues), **{"wait_time_seconds": 0, **overrides})


class NoDeleteSqs(SqsResource):
    """A crash after the commit and before any delete: every delete 'fails', so everything comes back."""

    def delete(self, messages: Sequence[QueueMessage]) -> list[str]:
        return [m.message_id for m in messages]


def resources(
    endpoint: str,
    queues: QueueUrls,
    database_url: str,
    *,
    sqs: SqsResource | None = None,
    key: str = TEST_KEY_HEX,
    mode: str = "hmac",
) -> dict[str, Any]:
    """The pipeline's resources on the test servers, from their variables (an empty `key` leaves it unset)."""
    env = resource_env(endpoint, queues, database_url, key=key, mode=mode)
    return {
        "sqs": sqs or sqs_resource(endpoint, queues),
        "postgres": postgres_from_env(env),
        "pii_masking": masking_from_env(env),
        "batch_io_manager": batch_io_manager,
    }


def run_pipeline(
    res: dict[str, Any], instance: DagsterInstance | None = None, raise_on_error: bool = True
) -> ExecuteInProcessResult:
    return materialize(ASSETS, resources=res, instance=instance, raise_on_error=raise_on_error)


def metadata(result: ExecuteInProcessResult, node: str = "user_logins") -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(node)
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def send(sqs_client: Any, queue_url: str, bodies: Sequence[str]) -> list[str]:
    """Send bodies; returns their MessageIds in order."""
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        chunk = bodies[start : start + 10]
        response = sqs_client.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)]
        )
        assert not response.get("Failed"), response.get("Failed")
        by_entry = {int(ok["Id"]): ok["MessageId"] for ok in response["Successful"]}
        ids += [by_entry[i] for i in range(len(chunk))]
    return ids


def queue_counts(sqs_client: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) for a queue."""
    attrs = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def wait_until_none_in_flight(sqs_client: Any, queue_url: str, timeout: float = 30) -> None:
    """Wait for every held message to come back: a dead run's heartbeat may have extended some just before."""
    deadline = time.monotonic() + timeout
    while queue_counts(sqs_client, queue_url)[1] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert queue_counts(sqs_client, queue_url)[1] == 0, "messages stayed in flight past the visibility timeout"


def drain(sqs_client: Any, queue_url: str) -> list[dict[str, Any]]:
    """Receive everything on a queue (with message attributes), deleting nothing."""
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs_client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
        ).get("Messages", [])
        if not batch:
            return messages
        messages += batch


def fetch_all(database_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def execute(database_url: str, sql: str, params: Sequence[Any] = ()) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(sql, params)


def login_body(**fields: Any) -> str:
    """A valid login body; keyword arguments override or add fields (None values kept as null)."""
    body: dict[str, Any] = {
        "user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae",
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": "199.172.111.135",
        "locale": "RU",
        "device_id": "593-47-5928",
    }
    body.update(fields)
    return json.dumps(body)


# Sockets bound (never listening) for closed_port(), kept for the whole session.
_HELD_PORTS: list[socket.socket] = []


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on, for as long as the tests run: connecting to it is refused.

    The port stays bound by this process without listening, so no other program can take it between the
    choice and the test's connection attempt (a port released right away could be reused at once).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(sock)
    return int(sock.getsockname()[1])


# Settings the pipeline reads from the environment: a subprocess gets each one a test states, none leaks in.
PIPELINE_ENV_PREFIXES = ("AWS_", "SQS_", "PII_MASKING_", "DAGSTER_", "LOGIN_QUEUE_")
PIPELINE_ENV_NAMES = ("DATABASE_URL",)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any pipeline setting, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name == "AWS_CA_BUNDLE" or not (name.startswith(PIPELINE_ENV_PREFIXES) or name in PIPELINE_ENV_NAMES)
    }
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    env.update(settings)
    return env


def aws_env(sqs_endpoint: str, **settings: str) -> dict[str, str]:
    """A clean environment pointed at the test SQS server."""
    return clean_env(
        AWS_ENDPOINT_URL=sqs_endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        **settings,
    )


def pipeline_env(sqs_endpoint: str, queues: QueueUrls, database_url: str, **settings: str) -> dict[str, str]:
    """Everything `dagster asset materialize -m fetch_etl.definitions` needs, for a subprocess."""
    return aws_env(
        sqs_endpoint,
        SQS_QUEUE_URL=queues.queue_url,
        SQS_DLQ_URL=queues.dlq_url,
        DATABASE_URL=database_url,
        SQS_DELETE_THREADS="1",  # see LocalStack.env(): moto loses deletes made in parallel on one queue
        **settings,
    )


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line mentions `text` (a state dir, a port): what a test may have left running."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
    return found
