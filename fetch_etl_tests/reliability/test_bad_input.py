"""Hostile and broken bodies through the whole pipeline (moto SQS -> Dagster -> Postgres).

Each body is a message in one batch with valid logins around it: every one is loaded or rejected with a
reason a person understands, the rest of the batch loads, and nothing raises out of the batch.
"""

from __future__ import annotations

import json
from typing import Any

from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl_tests.helpers import (
    FOO_BAR,
    drain,
    fetch_all,
    login_body,
    metadata,
    queue_counts,
    resources,
    run_pipeline,
    send,
)

NEAR_LIMIT = 250 * 1024  # SQS caps a message at 256 KiB

# (body, expected reason_code or None when it must load)
CASES: list[tuple[str, str | None]] = [
    ("not json at all", "invalid_json"),
    ("[1, 2, 3]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ("42", "not_an_object"),
    ("null", "not_an_object"),
    ("{}", "not_a_login"),
    (FOO_BAR, "not_a_login"),
    (json.dumps({k: v for k, v in json.loads(login_body()).items() if k != "ip"}), "missing_ip"),
    (login_body(device_id=None), "missing_device_id"),
    (login_body(user_id=""), "missing_user_id"),
    (login_body(app_version=230), "invalid_app_version"),
    (login_body(device_type=["ios"]), "invalid_device_type"),
    (login_body(ip={"v4": "1.2.3.4"}), "invalid_ip"),
    (login_body(user_id="u" * 129), "too_long_user_id"),
    (login_body(device_type="d" * 33), "too_long_device_type"),
    (login_body(locale="l" * 33), "too_long_locale"),
    (login_body(device_id="nul\u0000inside"), "invalid_device_id"),
    (login_body(user_id="\ud800"), "invalid_user_id"),
    (
        '{"user_id": "a", "user_id": "b", "app_version": "1", "device_type": "x", "ip": "1.2.3.4", "device_id": "1"}',
        "duplicate_key",
    ),
    (login_body(app_version="1.2.3.4"), "invalid_app_version"),
    (login_body(app_version="1.1000.0"), "invalid_app_version"),
    (login_body(app_version="-1.2"), "invalid_app_version"),
    (login_body(app_version="2.3.0-beta"), "invalid_app_version"),
    ("{" + " " * NEAR_LIMIT + "oops", "invalid_json"),
    # These load, intact.
    (login_body(user_id="🙂 ünïcödé ユーザー", locale="日本"), None),
    (login_body(user_id="'; DROP TABLE user_logins; --", device_type="ios\\'--", locale="x'); --"), None),
    (login_body(email="someone@example.com", password="hunter2"), None),
    (login_body(padding="p" * NEAR_LIMIT), None),
    (login_body(user_id="u" * 128, device_type="d" * 32, locale="l" * 32), None),
]


def test_each_bad_body_is_rejected_with_its_reason_and_the_rest_loads(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    good = generate_bodies(20, seed=21, malformed_rate=0)
    ids = send(sqs_client, queue_urls.queue_url, [body for body, _ in CASES] + good)
    case_ids = ids[: len(CASES)]

    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))

    expected_rejects = {mid: code for mid, (_, code) in zip(case_ids, CASES, strict=True) if code}
    rejects = dict(fetch_all(database_url, "SELECT message_id, reason_code FROM user_logins_rejected"))
    assert rejects == expected_rejects
    reasons = [row[0] for row in fetch_all(database_url, "SELECT reason FROM user_logins_rejected")]
    assert all(len(reason) > 15 for reason in reasons), "a sentence, not a code"
    loaded = {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")}
    assert loaded == set(ids) - set(expected_rejects)
    assert meta["loaded"] == len(loaded)

    stored = {
        row[0]: row[1:] for row in fetch_all(database_url, "SELECT user_id, device_type, locale FROM user_logins")
    }
    assert stored["🙂 ünïcödé ユーザー"] == ("android", "日本")
    assert stored["'; DROP TABLE user_logins; --"] == ("ios\\'--", "x'); --")

    everything = str(fetch_all(database_url, "SELECT * FROM user_logins")) + str(
        fetch_all(database_url, "SELECT * FROM user_logins_rejected")
    )
    assert "someone@example.com" not in everything and "hunter2" not in everything, "extra keys are never stored"
    dead = drain(sqs_client, queue_urls.dlq_url)
    assert sorted(m["MessageAttributes"]["original_message_id"]["StringValue"] for m in dead) == sorted(
        expected_rejects
    )
    assert max(len(m["Body"]) for m in dead) > NEAR_LIMIT, "the near-limit reject reached the DLQ unchanged"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
