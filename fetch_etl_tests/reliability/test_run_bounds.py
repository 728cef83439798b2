"""Every run ends and holds a bounded amount: a slow endpoint, expiring messages and large bodies against moto.

The slow endpoint is moto behind `benchmarks.relay.DelayRelay` (a real TCP relay adding latency); the runs
that could spin are subprocesses or bounded by the number of calls, so a regression fails instead of hanging.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest

from benchmarks.relay import DelayRelay
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.heartbeat import VisibilityHeartbeat
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.queue.receiver import ParallelReceiver
from fetch_etl_tests.helpers import (
    TEST_KEY_HEX,
    fetch_all,
    metadata,
    pipeline_env,
    queue_counts,
    resources,
    run_pipeline,
    send,
    sqs_resource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def plain_queues(sqs_client: Any) -> Iterator[QueueUrls]:
    """A queue without SQS's own redrive (as on AWS when none is configured): moto never moves messages away."""
    name = f"plain-{uuid4().hex[:12]}"
    urls = QueueUrls(
        sqs_client.create_queue(QueueName=name)["QueueUrl"],
        sqs_client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"],
    )
    yield urls
    for url in urls:
        sqs_client.delete_queue(QueueUrl=url)


@pytest.fixture
def slow_endpoint(sqs_endpoint: str) -> Iterator[str]:
    """moto 200 ms away: each call costs a round trip, like a distant region or a loaded server."""
    with DelayRelay(urlsplit(sqs_endpoint).port or 80, 0.2) as relay:
        yield relay.endpoint


def test_a_run_against_a_slow_endpoint_with_a_short_visibility_timeout_ends(
    slow_endpoint: str, sqs_endpoint: str, sqs_client: Any, plain_queues: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    """The issue's hang: receiving 600 messages takes longer than they stay invisible, so they come back.

    Before: the receivers saw full batches of returning messages forever (never an empty poll) and the run
    did not end. Now the receive phase stops when held messages return or at half the visibility timeout.
    """
    ids = send(sqs_client, plain_queues.queue_url, generate_bodies(600, seed=131, malformed_rate=0))
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = pipeline_env(
        slow_endpoint,
        plain_queues,
        database_url,
        PII_MASKING_KEY=TEST_KEY_HEX,
        DAGSTER_HOME=str(home),
        SQS_VISIBILITY_TIMEOUT="3",
        SQS_RECEIVE_THREADS="4",
    )
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"]
    try:
        run = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the run against the slow endpoint did not end within 150 s")
    assert run.returncode == 0, run.stderr[-3000:]
    first = fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0]
    assert 0 < first < 600, "the run ended with a part of the queue, not all of it and not nothing"

    # What the bounded run left is taken by the next runs (straight to moto); each message lands once.
    for _ in range(10):
        run_pipeline(resources(sqs_endpoint, plain_queues, database_url))
        if queue_counts(sqs_client, plain_queues.queue_url) == (0, 0):
            break
    loaded = [row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")]
    assert sorted(loaded) == sorted(ids)
    assert queue_counts(sqs_client, plain_queues.queue_url) == (0, 0)


def _moto_fetch(sqs_client: Any, queue_url: str, visibility: int, max_calls: int) -> Any:
    calls: list[int] = []

    def fetch(max_messages: int, wait_seconds: int) -> list[QueueMessage]:
        calls.append(max_messages)
        assert len(calls) <= max_calls, "the receivers kept polling messages they already hold"
        response = sqs_client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility,
        )
        return [
            QueueMessage(m["MessageId"], m["ReceiptHandle"], m["Body"], None, 1) for m in response.get("Messages", [])
        ]

    return fetch


def test_a_message_the_run_already_holds_coming_back_ends_the_receive_phase(
    sqs_client: Any, plain_queues: QueueUrls
) -> None:
    """Visibility 0: every message is visible again at once, the way an expired one is. One lap, then stop."""
    send(sqs_client, plain_queues.queue_url, generate_bodies(25, seed=132))
    held: list[QueueMessage] = []
    receiver = ParallelReceiver(
        _moto_fetch(sqs_client, plain_queues.queue_url, visibility=0, max_calls=50),
        held.extend,
        limit=1000,
        threads=1,
        wait_time_seconds=0,
    )

    received = receiver.run()

    assert {m.message_id for m in received} == {m.message_id for m in held}
    assert 0 < len(received) <= 25
    newest = {m.message_id: m.receipt_handle for m in held}  # hold() saw every batch in order
    assert {m.message_id: m.receipt_handle for m in received} == newest, "the newest receipt handle is kept"


def test_the_receive_phase_ends_at_its_deadline_even_while_batches_keep_coming(
    sqs_client: Any, plain_queues: QueueUrls
) -> None:
    send(sqs_client, plain_queues.queue_url, generate_bodies(400, seed=133))
    receiver = ParallelReceiver(
        _moto_fetch(sqs_client, plain_queues.queue_url, visibility=30, max_calls=1000),
        lambda _: None,
        limit=1000,
        threads=1,
        wait_time_seconds=0,
        max_seconds=0.0,
    )
    assert receiver.run() == [], "a deadline already passed receives nothing"


def test_a_run_stops_receiving_at_the_byte_limit_and_reports_the_bytes(
    sqs_endpoint: str, sqs_client: Any, plain_queues: QueueUrls, database_url: str
) -> None:
    body = generate_bodies(1, seed=134, malformed_rate=0)[0]
    padded = body[:-1] + ', "padding": "' + "x" * (4096 - len(body) - 15) + '"}'  # a 4 KiB login
    size = len(padded.encode())
    send(sqs_client, plain_queues.queue_url, [padded] * 50)
    limit = 10 * size + 1  # crossed by the 11th message: the second receive call
    sqs = sqs_resource(sqs_endpoint, plain_queues, receive_threads=1, max_bytes_per_run=limit)

    result = run_pipeline(resources(sqs_endpoint, plain_queues, database_url, sqs=sqs))

    raw = metadata(result, "raw_login_messages")
    assert raw["received"] == 20, "the call that crossed the limit is kept, no further call is made"
    assert raw["received_bytes"] == 20 * size
    assert queue_counts(sqs_client, plain_queues.queue_url) == (30, 0)


def test_the_heartbeat_extends_only_the_newest_handle_of_messages_still_held() -> None:
    sent: list[list[dict[str, Any]]] = []

    def change_visibility(entries: list[dict[str, Any]]) -> dict[str, Any]:
        sent.append(entries)
        return {}

    heartbeat = VisibilityHeartbeat(change_visibility, 1, threads=2)
    heartbeat.hold([QueueMessage("a", "a-1", "", None, 1), QueueMessage("b", "b-1", "", None, 1)])
    heartbeat.hold([QueueMessage("a", "a-2", "", None, 1)])  # "a" came back: only its new handle is ours
    heartbeat.release(["b"])  # deleted
    heartbeat.beat()
    heartbeat.stop()

    assert [e["ReceiptHandle"] for entries in sent for e in entries] == ["a-2"]
