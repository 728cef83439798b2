"""Hypothesis fuzz: at least 10,000 generated bodies, valid and broken mixed, through parse -> mask -> load.

Against real Postgres. After every batch the invariant holds: each message is exactly once either in
`user_logins` or in `user_logins_rejected`, nothing raised, and what loaded is what was sent.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pandas as pd
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetch_etl.batch import loadable, mask_messages, rejected
from fetch_etl.masking import HmacMasker
from fetch_etl.resources.sqs import QueueMessage
from fetch_etl.warehouse import load_batch, migrate

MIN_BODIES = 10_000
BATCHES = 260
MASKER = HmacMasker(bytes(range(32)))

_text = st.text(max_size=40) | st.sampled_from(["", " ", "\x00", "\ud800", "'; DROP TABLE user_logins; --", "🙂é"])
_version = (
    st.sampled_from(["2.3.0", "0.96", "3.7", "999.999.999", "2.3.0-beta", "1.2.3.4", "1000", "-1", "a.b"]) | _text
)
_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=6,
)
_field = _text | _any_json
_safe = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=32).filter(
    str.strip
)
_valid_version = st.lists(st.integers(0, 999), min_size=1, max_size=3).map(lambda parts: ".".join(map(str, parts)))
_valid_login = st.fixed_dictionaries(
    {
        "user_id": st.uuids().map(str) | _safe | st.just("'; DROP TABLE user_logins; --"),
        "app_version": _valid_version,
        "device_type": st.sampled_from(["android", "ios"]) | _safe,
        "ip": st.ip_addresses().map(str) | _safe,
        "locale": st.none() | st.sampled_from(["RU", "PH"]) | _safe,
        "device_id": st.from_regex(r"\A[0-9]{3}-[0-9]{2}-[0-9]{4}\Z") | _safe,
    },
    optional={"email": st.emails(), "extra": _any_json},
)
_broken_login = st.fixed_dictionaries(
    {
        "user_id": st.uuids().map(str) | _field | st.text(min_size=120, max_size=140),
        "app_version": _version | _text | _field,
        "device_type": st.sampled_from(["android", "ios"]) | _field | st.text(min_size=30, max_size=35),
        "ip": st.ip_addresses().map(str) | _field,
        "locale": st.none() | _field | st.text(min_size=30, max_size=35),
        "device_id": _field,
    },
    optional={"email": st.emails()},
)
_body = st.one_of(
    _valid_login.map(json.dumps),
    _valid_login.map(lambda login: json.dumps(login, ensure_ascii=False)),
    _broken_login.map(json.dumps),
    _any_json.map(json.dumps),
    _text,
    st.sampled_from(['{"foo": "oops_wrong_msg_type", "bar": "123"}', "not json {", "[]", "null", "{}"]),
)

_ids = itertools.count()
_sent: list[int] = []


def _check_invariant(conn: psycopg.Connection, messages: list[QueueMessage]) -> None:
    ids = [m.message_id for m in messages]
    loaded = {row[0] for row in conn.execute("SELECT message_id FROM user_logins WHERE message_id = ANY(%s)", (ids,))}
    refused = {
        row[0] for row in conn.execute("SELECT message_id FROM user_logins_rejected WHERE message_id = ANY(%s)", (ids,))
    }
    assert loaded.isdisjoint(refused)
    assert loaded | refused == set(ids), "every message is somewhere"


def _check_stored_intact(conn: psycopg.Connection, frame: Any) -> None:
    """Text such as emoji, quotes and SQL comes back from Postgres exactly as parsed."""
    columns = ["message_id", "user_id", "device_type", "locale", "app_version", "masked_ip", "masked_device_id"]
    expected = {
        tuple(None if v is None or v is pd.NA else v for v in row) for row in frame[columns].itertuples(index=False)
    }
    stored = set(
        conn.execute(
            f"SELECT {', '.join(columns)} FROM user_logins WHERE message_id = ANY(%s)",
            (frame["message_id"].tolist(),),
        ).fetchall()
    )
    assert stored == expected


def test_fuzzed_bodies_are_each_loaded_or_rejected_exactly_once(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)

        @settings(max_examples=BATCHES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.lists(_body, min_size=30, max_size=60))
        def load_one_batch(bodies: list[str]) -> None:
            messages = [QueueMessage(f"fuzz-{next(_ids)}", "handle", body, "1700000000000", 1) for body in bodies]
            frame = mask_messages(messages, MASKER)
            result = load_batch(conn, loadable(frame), rejected(frame))
            assert result.inserted == len(loadable(frame))
            _check_invariant(conn, messages)
            _check_stored_intact(conn, loadable(frame))
            _sent.append(len(messages))

        load_one_batch()
        counts: Any = conn.execute(
            "SELECT (SELECT count(*) FROM user_logins), (SELECT count(*) FROM user_logins_rejected)"
        ).fetchone()
    loaded, refused = counts
    print(f"fuzz: {sum(_sent)} bodies, {loaded} loaded, {refused} rejected")
    assert sum(_sent) >= MIN_BODIES, f"only {sum(_sent)} bodies were generated"
    assert loaded + refused == sum(_sent)
    assert loaded >= 0.1 * sum(_sent) and refused >= 0.1 * sum(_sent), "both paths are exercised"
