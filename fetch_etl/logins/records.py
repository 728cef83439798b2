"""Parsing and validating login message bodies: pure functions, no I/O, no Dagster.

A body either becomes a `LoginEvent` (still holding the clear IP and device id, which only ever
live in memory) or a `Rejection` whose reason never quotes a field value, so reasons can be stored
and logged safely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fetch_etl.warehouse.schema import USER_LOGINS


def _varchar_limit(column: str) -> int:
    """A user_logins column's varchar(n), read from the table's one spec: a longer value is rejected, never cut."""
    limit = USER_LOGINS.column(column).max_chars
    if limit is None:
        raise TypeError(f"user_logins.{column} is not a varchar(n)")
    return limit


USER_ID_MAX = _varchar_limit("user_id")
DEVICE_TYPE_MAX = _varchar_limit("device_type")
LOCALE_MAX = _varchar_limit("locale")
APP_VERSION_RAW_MAX = 64
# In UTF-8 bytes, because a reversible (siv) token grows with the bytes and must fit varchar(256).
# The longest IPv6 spelling is 45 characters; device ids are short serials.
IP_MAX_BYTES = 64
DEVICE_ID_MAX_BYTES = 128
_REQUIRED = ("user_id", "device_type", "ip", "device_id", "app_version")
_LIMITS = {"user_id": USER_ID_MAX, "device_type": DEVICE_TYPE_MAX}
_BYTE_LIMITS = {"ip": IP_MAX_BYTES, "device_id": DEVICE_ID_MAX_BYTES}
_VERSION_RE = re.compile(r"\A([0-9]{1,3})(?:\.([0-9]{1,3}))?(?:\.([0-9]{1,3}))?\Z")


@dataclass(frozen=True, slots=True)
class LoginEvent:
    """A valid login as it arrived; `ip` and `device_id` are clear text, never persisted."""

    user_id: str
    device_type: str
    ip: str
    device_id: str
    locale: str | None
    app_version: int
    app_version_raw: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a body cannot be loaded. `code` groups rejections; `reason` is for people."""

    code: str
    reason: str


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def encode_app_version(raw: str) -> int | None:
    """`major.minor.patch` as major*1e6 + minor*1e3 + patch; None when not 1-3 integers of 0-999.

    Unlike dropping the dots, distinct versions never collide: "0.2.6", "0.26" and "2.6" differ.
    """
    match = _VERSION_RE.match(raw)
    if match is None:
        return None
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return major * 1_000_000 + minor * 1_000 + patch


def _text_problem(value: str) -> str | None:
    """Postgres text holds neither NUL nor lone surrogates; say which, without the value."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def parse_login(body: str, *, limits_in_bytes: bool = False) -> LoginEvent | Rejection:
    """Validate one message body against the login contract; never raises.

    `limits_in_bytes`: the varchar limits count UTF-8 bytes, as they do on a SQL_ASCII warehouse (there
    `varchar(n)` holds n bytes), so a value that would not fit is rejected instead of failing the load.
    """
    size, unit = (_utf8_length, "bytes in UTF-8") if limits_in_bytes else (len, "characters")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey:  # the key itself is not quoted: a producer may key a map by IP
        return Rejection("duplicate_key", "a JSON object in the body repeats a key")
    except (ValueError, RecursionError):
        return Rejection("invalid_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return Rejection("not_an_object", f"the body is a JSON {_json_type(data)}, not an object")
    if not any(key in data for key in _REQUIRED):
        return Rejection("not_a_login", "the object has none of the login fields")

    fields: dict[str, str] = {}
    for key in _REQUIRED:
        value = data.get(key)
        if value is None:
            return Rejection(f"missing_{key}", f"required field {key!r} is missing or null")
        if not isinstance(value, str):
            return Rejection(f"invalid_{key}", f"field {key!r} must be a string, got {_json_type(value)}")
        if not value.strip():
            return Rejection(f"missing_{key}", f"required field {key!r} is empty")
        if problem := _text_problem(value):
            return Rejection(f"invalid_{key}", f"field {key!r} {problem}")
        limit = _LIMITS.get(key)
        if limit is not None and size(value) > limit:
            return Rejection(f"too_long_{key}", f"field {key!r} is longer than {limit} {unit}")
        if _too_many_bytes(key, value):
            return Rejection(f"too_long_{key}", f"field {key!r} is longer than {_BYTE_LIMITS[key]} bytes in UTF-8")
        fields[key] = value

    locale = data.get("locale")
    if locale is not None:
        if not isinstance(locale, str):
            return Rejection("invalid_locale", f"field 'locale' must be a string, got {_json_type(locale)}")
        if problem := _text_problem(locale):
            return Rejection("invalid_locale", f"field 'locale' {problem}")
        if size(locale) > LOCALE_MAX:
            return Rejection("too_long_locale", f"field 'locale' is longer than {LOCALE_MAX} {unit}")

    raw_version = fields["app_version"]
    version = encode_app_version(raw_version) if len(raw_version) <= APP_VERSION_RAW_MAX else None
    if version is None:
        return Rejection("invalid_app_version", "field 'app_version' is not 1-3 dot-separated integers of 0-999")
    return LoginEvent(
        user_id=fields["user_id"],
        device_type=fields["device_type"],
        ip=fields["ip"],
        device_id=fields["device_id"],
        locale=locale,
        app_version=version,
        app_version_raw=raw_version,
    )


def _utf8_length(value: str) -> int:
    return len(value.encode("utf-8"))


def _too_many_bytes(key: str, value: str) -> bool:
    limit = _BYTE_LIMITS.get(key)
    return limit is not None and len(value.encode("utf-8")) > limit


def maskable_pii(body: str) -> tuple[str | None, str | None]:
    """(ip, device_id) of a rejected body, each only if it is a string a masker accepts; else None.

    So that rejects stored in Postgres can carry tokens too (finding, say, every reject from one IP)
    while the untouched body stays only in the dead-letter queue. Of repeated keys the last counts.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None

    def usable(key: str) -> str | None:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip() or _text_problem(value) or _too_many_bytes(key, value):
            return None
        return value

    return usable("ip"), usable("device_id")


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", str: "string"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def sent_time(sent_timestamp_ms: str | int | None) -> datetime | None:
    """SQS's `SentTimestamp` (epoch milliseconds) as a UTC datetime."""
    if sent_timestamp_ms is None:
        return None
    try:
        return datetime.fromtimestamp(int(sent_timestamp_ms) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def sent_date(sent_timestamp_ms: str | int | None) -> date | None:
    """The UTC calendar date of SQS's `SentTimestamp`."""
    sent = sent_time(sent_timestamp_ms)
    return sent.date() if sent else None
