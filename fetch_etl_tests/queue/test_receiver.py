"""Parallel receivers against moto's SQS server: every message once, never more than the limit, long polls last."""

from __future__ import annotations

from typing import Any

import pytest

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.client import pool_size
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.queue.receiver import ParallelReceiver
from fetch_etl_tests.helpers import queue_counts, send, sqs_resource


@pytest.mark.parametrize("threads", [1, 4])
def test_threads_drain_every_message_exactly_once(
    threads: int, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    sent = send(sqs_client, queue_urls.queue_url, generate_bodies(57, seed=21))
    sqs = sqs_resource(sqs_endpoint, queue_urls, receive_threads=threads)
    try:
        received = sqs.receive()
    finally:
        sqs.release()

    ids = [m.message_id for m in received]
    assert len(ids) == len(set(ids)) == 57
    assert set(ids) == set(sent)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 57)


@pytest.mark.parametrize("limit", [5, 23])
def test_threads_never_take_more_than_the_limit(
    limit: int, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(35, seed=22))
    sqs = sqs_resource(sqs_endpoint, queue_urls, receive_threads=4)
    try:
        received = sqs.receive(limit=limit)
    finally:
        sqs.release()

    assert len({m.message_id for m in received}) == len(received) == limit
    assert queue_counts(sqs_client, queue_urls.queue_url) == (35 - limit, limit)


def test_short_polls_while_batches_are_full_then_one_empty_long_poll_ends_the_drain(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(25, seed=23))
    calls: list[tuple[int, int, int]] = []

    def fetch(max_messages: int, wait_seconds: int) -> list[QueueMessage]:
        response = sqs_client.receive_message(
            QueueUrl=queue_urls.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=30,
        )
        batch = [QueueMessage(m["MessageId"], m["ReceiptHandle"], "", None, 1) for m in response.get("Messages", [])]
        calls.append((max_messages, wait_seconds, len(batch)))
        return batch

    receiver = ParallelReceiver(fetch, lambda _: None, limit=100, threads=1, wait_time_seconds=1)  # no queue_empty

    assert len(receiver.run()) == 25
    assert calls == [(10, 0, 10), (10, 0, 10), (10, 0, 5), (10, 1, 0)]


def _recording_fetch(sqs_client: Any, queue_url: str, calls: list[tuple[int, int, int]]) -> Any:
    def fetch(max_messages: int, wait_seconds: int) -> list[QueueMessage]:
        response = sqs_client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_seconds, VisibilityTimeout=30
        )
        batch = [QueueMessage(m["MessageId"], m["ReceiptHandle"], "", None, 1) for m in response.get("Messages", [])]
        calls.append((max_messages, wait_seconds, len(batch)))
        return batch

    return fetch


def test_a_short_receive_on_an_empty_queue_ends_the_drain_without_the_long_poll(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(25, seed=24))
    calls: list[tuple[int, int, int]] = []
    asked: list[int] = []
    sqs = sqs_resource(sqs_endpoint, queue_urls)

    def queue_empty() -> bool:
        asked.append(sqs.depth().visible)
        return asked[-1] == 0

    fetch = _recording_fetch(sqs_client, queue_urls.queue_url, calls)
    receiver = ParallelReceiver(
        fetch, lambda _: None, limit=100, threads=1, wait_time_seconds=1, queue_empty=queue_empty
    )

    assert len(receiver.run()) == 25
    assert calls == [(10, 0, 10), (10, 0, 10), (10, 0, 5)]  # no long poll: the depth said nothing is left
    assert asked == [0]
    assert receiver.stop_reason == "drained"


@pytest.mark.parametrize("answer", ["not empty", "error"])
def test_when_the_queue_is_not_known_empty_the_long_poll_still_decides(
    answer: str, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(15, seed=25))
    calls: list[tuple[int, int, int]] = []

    def queue_empty() -> bool:
        if answer == "error":
            raise RuntimeError("GetQueueAttributes refused")
        return False

    fetch = _recording_fetch(sqs_client, queue_urls.queue_url, calls)
    receiver = ParallelReceiver(
        fetch, lambda _: None, limit=100, threads=1, wait_time_seconds=1, queue_empty=queue_empty
    )

    assert len(receiver.run()) == 15
    assert calls == [(10, 0, 10), (10, 0, 5), (10, 1, 0)]
    assert receiver.stop_reason == "drained"


def test_receivers_wait_for_the_answer_and_take_what_arrived_meanwhile(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls
) -> None:
    """While one receiver asks, the others hold off; messages sent before the answer are still taken."""
    send(sqs_client, queue_urls.queue_url, generate_bodies(5, seed=26))
    calls: list[tuple[int, int, int]] = []
    late = generate_bodies(7, seed=27)

    def queue_empty() -> bool:
        if late:
            send(sqs_client, queue_urls.queue_url, late)  # arrives while the receivers wait for this answer
            late.clear()
        return False

    fetch = _recording_fetch(sqs_client, queue_urls.queue_url, calls)
    receiver = ParallelReceiver(
        fetch, lambda _: None, limit=100, threads=4, wait_time_seconds=1, queue_empty=queue_empty
    )

    assert len(receiver.run()) == 12
    assert receiver.stop_reason == "drained"


def test_the_connection_pool_covers_every_receiver_heartbeat_call_and_deleter(
    sqs_endpoint: str, queue_urls: QueueUrls
) -> None:
    sqs = sqs_resource(sqs_endpoint, queue_urls, receive_threads=16, delete_threads=8, protocol="json")
    assert pool_size(sqs) == 16 + 16 + 8
    assert sqs.client().meta.config.max_pool_connections == 40
    assert pool_size(sqs_resource(sqs_endpoint, queue_urls, receive_threads=2, delete_threads=1)) == 10
