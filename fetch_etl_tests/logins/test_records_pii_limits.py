"""Length limits on ip/device_id (so siv tokens fit varchar(256)) and the maskable PII of rejected bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fetch_etl.logins.records import DEVICE_ID_MAX_BYTES, IP_MAX_BYTES, LoginEvent, Rejection, maskable_pii, parse_login
from fetch_etl_tests.helpers import login_body

MARKER_IP = "203.0.113.99"
MARKER_DEVICE = "DEV-MARKER-3c1e"


@pytest.mark.parametrize(("field", "limit"), [("ip", IP_MAX_BYTES), ("device_id", DEVICE_ID_MAX_BYTES)])
@pytest.mark.parametrize("char", ["x", "é", "😀"], ids=["1-byte", "2-byte", "4-byte"])
def test_ip_and_device_id_are_limited_in_utf8_bytes(field: str, limit: int, char: str) -> None:
    width = len(char.encode("utf-8"))
    at_limit = char * (limit // width)
    event = parse_login(login_body(**{field: at_limit}))
    assert isinstance(event, LoginEvent) and getattr(event, field) == at_limit
    too_long = at_limit + char
    rejection = parse_login(login_body(**{field: too_long}))
    assert isinstance(rejection, Rejection)
    assert rejection.code == f"too_long_{field}"
    assert rejection.reason == f"field {field!r} is longer than {limit} bytes in UTF-8"
    assert char * 3 not in rejection.reason


def test_limits_leave_room_for_every_ip_spelling() -> None:
    assert (IP_MAX_BYTES, DEVICE_ID_MAX_BYTES) == (64, 128)
    longest = "0000:0000:0000:0000:0000:ffff:255.255.255.255"
    assert isinstance(parse_login(login_body(ip=longest)), LoginEvent)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (login_body(ip=MARKER_IP, device_id=MARKER_DEVICE, app_version="bad"), (MARKER_IP, MARKER_DEVICE)),
        (json.dumps({"ip": MARKER_IP}), (MARKER_IP, None)),
        (json.dumps({"device_id": f"  {MARKER_DEVICE} "}), (None, f"  {MARKER_DEVICE} ")),
        (json.dumps({"ip": [MARKER_IP], "device_id": 5}), (None, None)),
        (json.dumps({"ip": "   ", "device_id": ""}), (None, None)),
        (json.dumps({"ip": MARKER_IP + "\x00", "device_id": "x" * (DEVICE_ID_MAX_BYTES + 1)}), (None, None)),
        ('{"ip": "a\\ud800", "device_id": "' + MARKER_DEVICE + '"}', (None, MARKER_DEVICE)),
        (json.dumps([MARKER_IP, MARKER_DEVICE]), (None, None)),
        (login_body(ip=MARKER_IP)[:-1], (None, None)),
        ("[" * 100_000, (None, None)),
        ('{"ip": "1.1.1.1", "ip": "' + MARKER_IP + '"}', (MARKER_IP, None)),
    ],
    ids=[
        "bad-version",
        "ip-only",
        "device-only-unstripped",
        "wrong-types",
        "blank",
        "nul-and-too-long",
        "lone-surrogate",
        "array",
        "not-json",
        "deep-nesting",
        "repeated-key-last-wins",
    ],
)
def test_maskable_pii_of_rejected_bodies(body: str, expected: tuple[Any, Any]) -> None:
    assert maskable_pii(body) == expected
