"""Both masking modes load the same traffic into the same rows and the same duplicates (real runs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

from fetch_etl.local.servers import create_database, drop_database
from fetch_etl.local.stack import QueueUrls, create_queue_pair
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.logins.masking import HmacMasker, PiiField, SivMasker, token_mode
from fetch_etl_tests.helpers import TEST_KEY_HEX, fetch_all, metadata, resources, run_pipeline, send

KEY = bytes.fromhex(TEST_KEY_HEX)
VIEWS: dict[str, PiiField] = {"user_logins_duplicate_ips": "ip", "user_logins_duplicate_devices": "device_id"}


@pytest.fixture
def second_target(sqs_client: Any, postgres_server_url: str) -> Iterator[tuple[QueueUrls, str]]:
    """Another queue pair and another fresh database, for the second mode's run."""
    queues = create_queue_pair(sqs_client, f"q-{uuid4().hex[:12]}")
    name = f"t_{uuid4().hex[:12]}"
    url = create_database(postgres_server_url, name)
    try:
        yield queues, url
    finally:
        drop_database(postgres_server_url, name)
        for queue_url in queues:
            sqs_client.delete_queue(QueueUrl=queue_url)


def _view(database_url: str, view: str) -> dict[str, tuple[Any, ...]]:
    rows = fetch_all(
        database_url, f"SELECT token, logins, distinct_users, first_create_date, last_create_date FROM {view}"
    )
    return {row[0]: row[1:] for row in rows}


def test_both_modes_load_the_same_batch_with_identical_duplicate_counts(
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
    second_target: tuple[QueueUrls, str],
) -> None:
    siv_queues, siv_database = second_target
    bodies = generate_bodies(200, seed=11, malformed_rate=0.04)
    send(sqs_client, queue_urls.queue_url, bodies)
    send(sqs_client, siv_queues.queue_url, bodies)

    hmac_run = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url, mode="hmac")))
    siv_run = metadata(run_pipeline(resources(sqs_endpoint, siv_queues, siv_database, mode="siv")))

    for key in ("received", "loaded", "rejected", "rejected_by_reason"):
        assert hmac_run[key] == siv_run[key], key
    assert (hmac_run["loaded"], hmac_run["rejected"]) == (192, 8)
    hmac_masker, siv_masker = HmacMasker(KEY), SivMasker(KEY)
    for view, field in VIEWS.items():
        by_hmac, by_siv = _view(database_url, view), _view(siv_database, view)
        assert len(by_hmac) > 10, "the synthetic batch has duplicates"
        assert {token_mode(t) for t in by_hmac} == {"hmac"} and {token_mode(t) for t in by_siv} == {"siv"}
        # The same groups, token for token: a siv token revealed and masked with hmac is the hmac token.
        translated = {hmac_masker.mask(siv_masker.reveal(token, field)): stats for token, stats in by_siv.items()}
        assert translated == by_hmac, view

    per_mode = [
        fetch_all(
            url,
            "SELECT count(*), count(masked_ip), count(masked_device_id), count(mask_key_id) FROM user_logins_rejected",
        )
        for url in (database_url, siv_database)
    ]
    assert per_mode[0] == per_mode[1]
    # Two of each malformed kind: bad_app_version keeps ip and device_id, missing_ip the device_id only,
    # not_json and the foo/bar message neither.
    assert per_mode[0] == [(8, 2, 4, 4)]
