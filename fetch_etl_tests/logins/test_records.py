"""The login contract: parse_login, encode_app_version and sent_date (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetch_etl.logins.records import (
    DEVICE_TYPE_MAX,
    LOCALE_MAX,
    USER_ID_MAX,
    LoginEvent,
    Rejection,
    encode_app_version,
    parse_login,
    sent_date,
)

# Unique markers: if one of these shows up in a rejection reason, a clear value leaked.
IP = "203.0.113.77"
DEVICE_ID = "DEVICE-MARKER-7f3a9c51"
REQUIRED = ("user_id", "device_type", "ip", "device_id", "app_version")

VALID: dict[str, Any] = {
    "user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae",
    "app_version": "2.3.0",
    "device_type": "android",
    "ip": IP,
    "locale": "RU",
    "device_id": DEVICE_ID,
}


def body(**changes: Any) -> str:
    """The valid body with some fields replaced; a value of `...` removes the field."""
    data = {**VALID, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def accept(raw: str) -> LoginEvent:
    result = parse_login(raw)
    assert isinstance(result, LoginEvent), result
    return result


def reject(raw: str) -> Rejection:
    result = parse_login(raw)
    assert isinstance(result, Rejection), result
    assert result.code and result.code.strip()
    assert result.reason and result.reason.strip()
    return result


def assert_no_clear_values(rejection: Rejection, *values: str) -> None:
    for value in (IP, DEVICE_ID, *values):
        assert value not in rejection.reason
        assert value not in rejection.code


# --- valid bodies ---------------------------------------------------------------------------------


def test_valid_login_maps_every_field() -> None:
    event = accept(body())
    assert event == LoginEvent(
        user_id=VALID["user_id"],
        device_type="android",
        ip=IP,
        device_id=DEVICE_ID,
        locale="RU",
        app_version=2_003_000,
        app_version_raw="2.3.0",
    )


@pytest.mark.parametrize("locale", [None, ...], ids=["null", "absent"])
def test_locale_is_optional(locale: Any) -> None:
    assert accept(body(locale=locale)).locale is None


def test_other_keys_are_ignored() -> None:
    email = "jane.doe.marker@example.com"
    event = accept(body(email=email, extra={"nested": [1, 2]}, n=5, flag=True))
    assert "email" not in {f.name for f in dataclasses.fields(LoginEvent)}
    assert not hasattr(event, "email")
    assert email not in repr(dataclasses.astuple(event))


@pytest.mark.parametrize(
    ("field", "limit"),
    [("user_id", USER_ID_MAX), ("device_type", DEVICE_TYPE_MAX), ("locale", LOCALE_MAX)],
)
def test_length_limits_are_inclusive(field: str, limit: int) -> None:
    assert (USER_ID_MAX, DEVICE_TYPE_MAX, LOCALE_MAX) == (128, 32, 32)
    value = "x" * limit
    assert getattr(accept(body(**{field: value})), field) == value


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": "用户-Ünïcødé-😀", "device_type": "iPhone 🍎", "locale": "zh-Hant-TW"},
        {"device_id": "设备-Ω-≈-\U0001d518", "ip": "2001:db8::1"},
        {"user_id": "😀" * USER_ID_MAX},  # 128 code points, 512 UTF-8 bytes: the limit is characters
        {"locale": "\u0440\u0443-RU", "device_type": "Android™"},
    ],
    ids=["emoji", "non-ascii-device", "emoji-at-limit", "cyrillic"],
)
def test_non_ascii_text_loads_intact(changes: dict[str, str]) -> None:
    event = accept(body(**changes))
    for field, value in changes.items():
        assert getattr(event, field) == value


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": "'; DROP TABLE user_logins; --"},
        {"device_type": "android' OR '1'='1"},
        {"locale": "x'); DELETE FROM x;--"},
        {"device_id": 'a"b\\c\t\r\n%_$$;'},
        {"user_id": "Robert'); DROP TABLE Students;--", "ip": "1.1.1.1' --"},
    ],
)
def test_sql_injection_strings_are_just_data(changes: dict[str, str]) -> None:
    event = accept(body(**changes))
    for field, value in changes.items():
        assert getattr(event, field) == value


def test_values_are_not_stripped_or_rewritten() -> None:
    # Canonicalisation of ip/device_id is the masking step's job, not the parser's.
    event = accept(body(ip=f" {IP} ", user_id=" u "))
    assert event.ip == f" {IP} "
    assert event.user_id == " u "


# --- app_version ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("2.3.0", 2_003_000),
        ("0.96", 96_000),
        ("3.7", 3_007_000),
        ("0.2.6", 2_006),
        ("0.26", 26_000),
        ("2.6", 2_006_000),
        ("7", 7_000_000),
        ("0", 0),
        ("0.0.0", 0),
        ("999.999.999", 999_999_999),
        ("1.0.999", 1_000_999),
        ("10.20.30", 10_020_030),
    ],
)
def test_encode_app_version(raw: str, encoded: int) -> None:
    assert encode_app_version(raw) == encoded
    event = accept(body(app_version=raw))
    assert (event.app_version, event.app_version_raw) == (encoded, raw)


def test_versions_that_drop_the_dots_alike_stay_distinct() -> None:
    encoded = {encode_app_version(v) for v in ("0.2.6", "0.26", "2.6", "26", "2.0.6", "0.0.26")}
    assert len(encoded) == 6


@pytest.mark.parametrize(
    "raw",
    [
        "2.3.0-beta",
        "1.2.3.4",
        "1000",
        "1.1000",
        "1.2.1000",
        "-1.2",
        "1.-2",
        "+1.2",
        "",
        "a.b",
        "1.b",
        " 1.2",
        "1.2 ",
        "1.2\n",
        "1..2",
        ".1",
        "1.",
        "1.2.",
        "v1.2",
        "1,2",
        "1_000",
        "1e3",
        "0x10",
        "1.2.3" + "0" * 80,
    ],
)
def test_invalid_app_versions(raw: str) -> None:
    assert encode_app_version(raw) is None
    rejection = reject(body(app_version=raw))
    assert rejection.code in {"invalid_app_version", "missing_app_version"}


@given(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999))
def test_app_version_encoding_is_exact_and_reversible(major: int, minor: int, patch: int) -> None:
    encoded = encode_app_version(f"{major}.{minor}.{patch}")
    assert encoded == major * 1_000_000 + minor * 1_000 + patch
    assert divmod(encoded, 1_000_000)[0] == major
    assert divmod(encoded % 1_000_000, 1_000) == (minor, patch)
    assert encode_app_version(f"{major}.{minor}") == major * 1_000_000 + minor * 1_000
    assert encode_app_version(f"{major}") == major * 1_000_000


@given(st.text(max_size=20))
def test_encode_app_version_never_raises_and_stays_in_range(raw: str) -> None:
    encoded = encode_app_version(raw)
    assert encoded is None or 0 <= encoded <= 999_999_999


@pytest.mark.parametrize("raw", ["\uff12.\uff13.\uff10", "\u0661.\u0662.\u0663", "\u0663"])
def test_app_version_accepts_only_ascii_digits(raw: str) -> None:
    assert encode_app_version(raw) is None


# --- bad bodies -----------------------------------------------------------------------------------

BAD_TYPES: dict[str, Any] = {"number": 5, "float": 1.5, "bool": True, "list": ["x"], "object": {"a": "b"}}


def _field_cases() -> Iterator[Any]:
    for field in REQUIRED:
        yield pytest.param(body(**{field: ...}), f"missing_{field}", id=f"{field}-missing")
        yield pytest.param(body(**{field: None}), f"missing_{field}", id=f"{field}-null")
        yield pytest.param(body(**{field: ""}), f"missing_{field}", id=f"{field}-empty")
        yield pytest.param(body(**{field: "  \t "}), f"missing_{field}", id=f"{field}-blank")
        for name, value in BAD_TYPES.items():
            yield pytest.param(body(**{field: value}), f"invalid_{field}", id=f"{field}-{name}")
    for field in (*REQUIRED, "locale"):
        value = {"ip": IP, "device_id": DEVICE_ID}.get(field, "abc")
        yield pytest.param(body(**{field: value + "\x00"}), f"invalid_{field}", id=f"{field}-nul")
        # json.dumps would write a lone surrogate as the escape "\ud800" too; build the text by hand.
        escaped = body(**{field: "SURROGATE"}).replace("SURROGATE", value + "\\ud800")
        yield pytest.param(escaped, f"invalid_{field}", id=f"{field}-lone-surrogate")
    for name, value in BAD_TYPES.items():
        yield pytest.param(body(locale=value), "invalid_locale", id=f"locale-{name}")


BAD_BODIES = [
    pytest.param("not json", "invalid_json", id="not-json"),
    pytest.param("", "invalid_json", id="empty-body"),
    pytest.param("{", "invalid_json", id="truncated"),
    pytest.param(body()[:-10], "invalid_json", id="truncated-login"),
    pytest.param("{'user_id': 'x'}", "invalid_json", id="single-quotes"),
    pytest.param('{"user_id": "x",}', "invalid_json", id="trailing-comma"),
    pytest.param(f"ip={IP}&device_id={DEVICE_ID}", "invalid_json", id="form-encoded-with-pii"),
    pytest.param("\ufeff" + body(), "invalid_json", id="bom"),
    pytest.param("[" * 100_000 + "]" * 100_000, "invalid_json", id="deep-nesting"),
    pytest.param("[]", "not_an_object", id="array-empty"),
    pytest.param(json.dumps([VALID]), "not_an_object", id="array-of-login"),
    pytest.param(json.dumps(IP), "not_an_object", id="string"),
    pytest.param("42", "not_an_object", id="number"),
    pytest.param("null", "not_an_object", id="null"),
    pytest.param("true", "not_an_object", id="bool"),
    pytest.param("{}", "not_a_login", id="empty-object"),
    pytest.param('{"foo": "oops_wrong_msg_type", "bar": "123"}', "not_a_login", id="wrong-msg-type"),
    pytest.param(body(user_id="u" * (USER_ID_MAX + 1)), "too_long_user_id", id="user_id-129"),
    pytest.param(body(device_type="d" * (DEVICE_TYPE_MAX + 1)), "too_long_device_type", id="device_type-33"),
    pytest.param(body(locale="l" * (LOCALE_MAX + 1)), "too_long_locale", id="locale-33"),
    pytest.param(
        body(user_id="dup").replace('"user_id": "dup"', '"user_id": "a", "user_id": "b"'),
        "duplicate_key",
        id="duplicate-user_id",
    ),
    pytest.param(
        body().replace(f'"ip": "{IP}"', f'"ip": "{IP}", "ip": "{IP}"'),
        "duplicate_key",
        id="duplicate-ip",
    ),
    pytest.param(
        body(extra={"k": 1}).replace('{"k": 1}', '{"k": 1, "k": 2}'),
        "duplicate_key",
        id="duplicate-nested",
    ),
    *_field_cases(),
]


@pytest.mark.parametrize(("raw", "code"), BAD_BODIES)
def test_bad_bodies_are_rejected_without_quoting_values(raw: str, code: str) -> None:
    rejection = reject(raw)
    assert rejection.code == code
    assert_no_clear_values(rejection)


def test_rejection_names_the_field_not_the_value() -> None:
    rejection = reject(body(device_id=["secret-device"]))
    assert "device_id" in rejection.reason
    assert "secret-device" not in rejection.reason


def test_first_failing_field_wins_deterministically() -> None:
    assert reject(body(user_id=..., ip=...)).code == "missing_user_id"


# --- never raises, never leaks --------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
LOGIN_KEYS = st.sampled_from([*REQUIRED, "locale", "email", "foo"])
# The marker prefixes contain characters no reason text uses, so a leak cannot be a coincidence.
IP_VALUES = st.text(max_size=30).map(lambda s: "ip-\u2603-" + s)
DEVICE_VALUES = st.text(max_size=30).map(lambda s: "dev-\u2603-" + s)


@given(st.text())
def test_parse_login_never_raises_on_arbitrary_text(raw: str) -> None:
    assert isinstance(parse_login(raw), LoginEvent | Rejection)


@given(st.dictionaries(LOGIN_KEYS, JSON_VALUES | st.text(max_size=40)))
def test_parse_login_never_raises_on_login_shaped_objects(data: dict[str, Any]) -> None:
    result = parse_login(json.dumps(data))
    assert isinstance(result, LoginEvent | Rejection)
    if isinstance(result, Rejection):
        assert result.code and result.reason


@given(
    st.fixed_dictionaries(
        {"ip": IP_VALUES, "device_id": DEVICE_VALUES},
        optional={k: JSON_VALUES for k in ("user_id", "device_type", "app_version", "locale", "email")},
    ),
    st.booleans(),
)
def test_rejections_never_quote_ip_or_device_id(data: dict[str, Any], ascii_only: bool) -> None:
    result = parse_login(json.dumps(data, ensure_ascii=ascii_only))
    if isinstance(result, Rejection):
        assert data["ip"] not in result.reason
        assert data["device_id"] not in result.reason
        assert "\u2603" not in result.reason
    else:
        assert (result.ip, result.device_id) == (data["ip"], data["device_id"])


@given(st.sampled_from(REQUIRED), JSON_VALUES)
def test_any_required_field_value_is_accepted_or_rejected_cleanly(field: str, value: Any) -> None:
    result = parse_login(body(**{field: value}))
    if isinstance(result, Rejection):
        assert result.code.endswith(field)
        assert_no_clear_values(result)


# --- sent_date ------------------------------------------------------------------------------------


@pytest.fixture
def timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the process time zone (TZ + tzset); restored afterwards."""

    def set_tz(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("1700000000000", date(2023, 11, 14)),
        (1700000000000, date(2023, 11, 14)),
        ("1700006399999", date(2023, 11, 14)),  # 23:59:59.999 UTC
        ("1700006400000", date(2023, 11, 15)),  # UTC midnight
        ("0", date(1970, 1, 1)),
    ],
)
def test_sent_date_is_the_utc_date(stamp: str | int, expected: date) -> None:
    assert sent_date(stamp) == expected


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="time.tzset is POSIX only")
@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kolkata"])
def test_sent_date_ignores_the_local_time_zone(timezone: Any, tz: str) -> None:
    timezone(tz)
    assert os.environ["TZ"] == tz
    assert sent_date("1700006399999") == date(2023, 11, 14)
    assert sent_date("1700006400000") == date(2023, 11, 15)


@pytest.mark.parametrize("stamp", [None, "", "garbage", "1.7e12", "1700000000000.5", "0x10", "9" * 30, "1" * 5000])
def test_sent_date_garbage_is_none(stamp: str | None) -> None:
    assert sent_date(stamp) is None


@given(st.one_of(st.none(), st.text(max_size=30), st.integers(-(10**20), 10**20)))
def test_sent_date_never_raises(stamp: str | int | None) -> None:
    result = sent_date(stamp)
    assert result is None or isinstance(result, date)
