"""Hypothesis fuzz: at least 10,000 generated bodies, valid and broken mixed, through parse -> mask -> load.

Against real Postgres. For every body the test decides on its own, from the login contract (docs/design.md,
"The message contract"), whether it must load and with which stored values, or which reason_code must reject
it; what Postgres holds after the load must be exactly that. The expectation never reads the frame or the
parser of the code under test. Each example starts from empty tables, so a replayed (shrunk) example
behaves as it did the first time, and nothing is counted across examples at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetch_etl.logins.frame import loadable, mask_messages, rejected
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.warehouse.load import load_run, migrate

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


# --- the expectation, from the contract alone -------------------------------------------------

REQUIRED = ("user_id", "device_type", "ip", "device_id", "app_version")
CHARACTER_LIMITS = {"user_id": 128, "device_type": 32}
UTF8_BYTE_LIMITS = {"ip": 64, "device_id": 128}
LOCALE_LIMIT = 32
VERSION_RAW_LIMIT = 64
FIRST_SENT_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SENT_STEP_MS = 5 * 3_600_000  # five hours apart, so create_date changes within a batch


@dataclass(frozen=True)
class Loads:
    user_id: str
    device_type: str
    locale: str | None
    app_version: int
    app_version_raw: str
    ip: str
    device_id: str


@dataclass(frozen=True)
class Rejected:
    reason_code: str
    ip_token: bool  # the reject row carries a token of its ip (a usable string), never the ip itself
    device_token: bool


class _RepeatedKey(Exception):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RepeatedKey
    return dict(pairs)


def _unstorable(text: str) -> bool:
    """PostgreSQL text holds no NUL and no lone UTF-16 surrogate."""
    return "\x00" in text or any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def _version_number(raw: str) -> int | None:
    """1-3 dot-separated ASCII integers of 1-3 digits: major*1,000,000 + minor*1,000 + patch."""
    parts = raw.split(".")
    if len(raw) > VERSION_RAW_LIMIT or not 1 <= len(parts) <= 3:
        return None
    if not all(1 <= len(part) <= 3 and part.isascii() and part.isdigit() for part in parts):
        return None
    major, minor, patch = [int(part) for part in parts] + [0] * (3 - len(parts))
    return major * 1_000_000 + minor * 1_000 + patch


def _usable(data: Any, key: str) -> bool:
    """An ip/device_id string a masker takes: a reject row keeps its token."""
    value = data.get(key) if isinstance(data, dict) else None
    return (
        isinstance(value, str)
        and value.strip() != ""
        and not _unstorable(value)
        and len(value.encode("utf-8")) <= UTF8_BYTE_LIMITS[key]
    )


def expected(body: str) -> Loads | Rejected:
    """What the contract says becomes of this body."""
    try:
        data = json.loads(body, object_pairs_hook=_object)
    except _RepeatedKey:  # its tokens, if any, come from the last of the repeated keys
        last_wins = json.loads(body)
        return Rejected("duplicate_key", _usable(last_wins, "ip"), _usable(last_wins, "device_id"))
    except ValueError:
        return Rejected("invalid_json", False, False)
    if not isinstance(data, dict):
        return Rejected("not_an_object", False, False)

    def reject(code: str) -> Rejected:
        return Rejected(code, _usable(data, "ip"), _usable(data, "device_id"))

    if not any(key in data for key in REQUIRED):
        return reject("not_a_login")
    for key in REQUIRED:
        value = data.get(key)
        if value is None:
            return reject(f"missing_{key}")
        if type(value) is not str:
            return reject(f"invalid_{key}")
        if value.strip() == "":
            return reject(f"missing_{key}")
        if _unstorable(value):
            return reject(f"invalid_{key}")
        if len(value) > CHARACTER_LIMITS.get(key, len(value)):
            return reject(f"too_long_{key}")
        if key in UTF8_BYTE_LIMITS and len(value.encode("utf-8")) > UTF8_BYTE_LIMITS[key]:
            return reject(f"too_long_{key}")
    locale = data.get("locale")
    if locale is not None:
        if type(locale) is not str or _unstorable(locale):
            return reject("invalid_locale")
        if len(locale) > LOCALE_LIMIT:
            return reject("too_long_locale")
    version = _version_number(data["app_version"])
    if version is None:
        return reject("invalid_app_version")
    return Loads(
        data["user_id"], data["device_type"], locale, version, data["app_version"], data["ip"], data["device_id"]
    )


def _sent_ms(index: int) -> int:
    return FIRST_SENT_MS + index * SENT_STEP_MS


def _utc_date(sent_ms: int) -> date:
    return date(1970, 1, 1) + timedelta(milliseconds=sent_ms)


# --- the comparison ---------------------------------------------------------------------------


def _stored(conn: psycopg.Connection) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    logins = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT message_id, user_id, device_type, locale, app_version, app_version_raw, create_date, "
            "masked_ip, masked_device_id FROM user_logins"
        )
    }
    rejects = {
        row[0]: row[1:]
        for row in conn.execute("SELECT message_id, reason_code, masked_ip, masked_device_id FROM user_logins_rejected")
    }
    return logins, rejects


def _check_batch(conn: psycopg.Connection, bodies: list[str]) -> tuple[int, int]:
    """Stored == expected, message by message; returns (loaded, rejected)."""
    logins, rejects = _stored(conn)
    tokens: dict[tuple[str, str], str] = {}
    for index, body in enumerate(bodies):
        message_id = f"fuzz-{index}"
        outcome = expected(body)
        if isinstance(outcome, Rejected):
            assert message_id not in logins, f"{message_id} must be rejected ({outcome.reason_code}), not loaded"
            reason_code, masked_ip, masked_device_id = rejects[message_id]
            assert reason_code == outcome.reason_code, message_id
            assert (masked_ip is not None, masked_device_id is not None) == (outcome.ip_token, outcome.device_token)
            continue
        assert message_id not in rejects, f"{message_id} must load, was rejected as {rejects.get(message_id)}"
        *values, masked_ip, masked_device_id = logins[message_id]
        assert tuple(values) == (
            outcome.user_id,
            outcome.device_type,
            outcome.locale,
            outcome.app_version,
            outcome.app_version_raw,
            _utc_date(_sent_ms(index)),
        ), message_id
        for kind, clear, token in (("ip", outcome.ip, masked_ip), ("device_id", outcome.device_id, masked_device_id)):
            assert token and token != clear, f"{message_id}: {kind} stored in clear or not at all"
            assert tokens.setdefault((kind, clear), token) == token, "equal values get equal tokens"
    loaded = sum(isinstance(expected(body), Loads) for body in bodies)
    assert len(logins) == loaded and len(rejects) == len(bodies) - loaded, "nothing else is stored"
    return loaded, len(bodies) - loaded


def test_fuzzed_bodies_are_each_loaded_or_rejected_exactly_once(database_url: str) -> None:
    totals = {"bodies": 0, "loaded": 0, "rejected": 0}
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)

        @settings(
            max_examples=BATCHES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(st.lists(_body, min_size=30, max_size=60))
        def load_one_batch(bodies: list[str]) -> None:
            conn.execute("TRUNCATE user_logins, user_logins_rejected")
            messages = [QueueMessage(f"fuzz-{i}", "handle", body, str(_sent_ms(i)), 1) for i, body in enumerate(bodies)]
            frame = mask_messages(messages, MASKER)
            load_run(conn, loadable(frame), rejected(frame))
            loaded, refused = _check_batch(conn, bodies)
            totals["bodies"] += len(bodies)
            totals["loaded"] += loaded
            totals["rejected"] += refused

        load_one_batch()
    print(f"fuzz: {totals['bodies']} bodies, {totals['loaded']} loaded, {totals['rejected']} rejected")
    assert totals["bodies"] >= MIN_BODIES, f"only {totals['bodies']} bodies were generated"
    assert min(totals["loaded"], totals["rejected"]) >= 0.1 * totals["bodies"], "both paths are exercised"
