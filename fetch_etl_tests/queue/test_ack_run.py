"""The ack step as one call (`ack.acknowledge_run`), on real servers: after the load commits, it forwards the
rejects, deletes exactly the messages whose outcome is durable and hands the rest back."""

from __future__ import annotations

from typing import Any

import psycopg

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.logins import frame as login_frame
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue import ack
from fetch_etl.warehouse.load import load_run, migrate
from fetch_etl_tests.helpers import FOO_BAR, drain, queue_counts, send, sqs_resource

MASKER = HmacMasker(bytes(range(32)))


def test_acknowledge_run_forwards_rejects_deletes_the_durable_and_releases_the_rest(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(5, seed=31, malformed_rate=0), FOO_BAR])
    sqs = sqs_resource(sqs_endpoint, queue_urls)
    received = sqs.receive()
    assert len(received) == 6
    frame = login_frame.mask_messages(received, MASKER)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        load = load_run(conn, login_frame.loadable(frame), login_frame.rejected(frame))
        done = ack.acknowledge_run(conn, sqs, frame, load, received)
        (sent_at,) = conn.execute("SELECT dead_lettered_at FROM user_logins_rejected").fetchone() or (None,)

    assert (load.inserted, len(done.forwarding.forwarded), done.deleted, done.delete_failures) == (5, 1, 6, [])
    assert sent_at is not None, "the dead-letter copy is recorded before its message is deleted"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    assert [m["Body"] for m in drain(sqs_client, queue_urls.dlq_url)] == [FOO_BAR]


def test_acknowledge_run_keeps_what_is_not_durable_for_redelivery(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Nothing loaded (an empty load result for a batch that was never committed): nothing is deleted."""
    send(sqs_client, queue_urls.queue_url, generate_bodies(3, seed=32, malformed_rate=0))
    sqs = sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=2)
    received = sqs.receive()
    frame = login_frame.mask_messages(received, MASKER)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        nothing = load_run(conn, login_frame.loadable(frame).head(0), login_frame.rejected(frame).head(0))
        done = ack.acknowledge_run(conn, sqs, frame.head(0), nothing, received)

    assert (done.deleted, done.forwarding.forwarded) == (0, [])
    assert sum(queue_counts(sqs_client, queue_urls.queue_url)) == 3, "all three stay on the queue"
