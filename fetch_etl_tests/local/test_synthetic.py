"""Synthetic traffic must look like the real stream, or tests built on it prove nothing."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

import pytest

from fetch_etl.local.synthetic import LOGIN_KEYS, generate_bodies

VERSION_FORMS = {
    "X.Y.Z": re.compile(r"\d\.\d\.\d"),
    "X.YY": re.compile(r"\d\.\d\d"),
    "X.Y": re.compile(r"\d\.\d"),
}


def _valid_logins(bodies: list[str]) -> list[dict[str, Any]]:
    logins = []
    for body in bodies:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            continue
        if tuple(obj) == LOGIN_KEYS and any(p.fullmatch(obj["app_version"]) for p in VERSION_FORMS.values()):
            logins.append(obj)
    return logins


def test_same_seed_same_bodies_other_seed_different() -> None:
    assert generate_bodies(300, seed=7) == generate_bodies(300, seed=7)
    assert generate_bodies(300, seed=7) != generate_bodies(300, seed=8)


def test_shape_matches_real_traffic() -> None:
    logins = _valid_logins(generate_bodies(2000, seed=1, malformed_rate=0))
    assert len(logins) == 2000
    for login in logins:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", login["user_id"])
        assert login["device_type"] in {"android", "ios"}
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", login["device_id"])
        octets = login["ip"].split(".")
        assert len(octets) == 4 and all(o.isdigit() and 0 <= int(o) <= 255 for o in octets)
        assert login["locale"] is None or re.fullmatch(r"[A-Z]{2}", login["locale"])
    null_share = sum(login["locale"] is None for login in logins) / len(logins)
    assert 0.2 <= null_share <= 0.4
    forms = {name for login in logins for name, p in VERSION_FORMS.items() if p.fullmatch(login["app_version"])}
    assert forms == set(VERSION_FORMS)


def test_key_order_and_json_rendering_match_the_sample() -> None:
    body = generate_bodies(1, seed=3, malformed_rate=0)[0]
    assert body.startswith('{"user_id": "') and '"device_id": "' in body
    assert list(json.loads(body)) == list(LOGIN_KEYS)


@pytest.mark.parametrize("field", ["ip", "device_id"])
def test_ips_and_device_ids_repeat_across_distinct_users(field: str) -> None:
    users_by_value: dict[str, set[str]] = defaultdict(set)
    for login in _valid_logins(generate_bodies(600, seed=5)):
        users_by_value[login[field]].add(login["user_id"])
    assert any(len(users) > 1 for users in users_by_value.values())


@pytest.mark.parametrize(("count", "rate"), [(2000, 0.01), (1000, 0.05), (7, 0.5), (10, 1.0), (0, 0.3)])
def test_exact_malformed_count(count: int, rate: float) -> None:
    bodies = generate_bodies(count, seed=11, malformed_rate=rate)
    assert len(bodies) == count
    assert count - len(_valid_logins(bodies)) == round(count * rate)


def _kind(body: str) -> str:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return "not_json"
    if "foo" in obj:
        return "wrong_message_type"
    if "ip" not in obj:
        return "missing_ip"
    return "bad_app_version" if obj["app_version"].endswith("-beta") else "valid"


def test_malformed_bodies_cycle_through_every_kind() -> None:
    kinds = Counter(_kind(body) for body in generate_bodies(400, seed=2, malformed_rate=0.05))
    assert kinds == {"valid": 380, "not_json": 5, "wrong_message_type": 5, "missing_ip": 5, "bad_app_version": 5}


def test_no_malformed_when_rate_is_zero() -> None:
    bodies = generate_bodies(500, seed=9, malformed_rate=0)
    assert len(_valid_logins(bodies)) == 500


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        generate_bodies(-1)
    with pytest.raises(ValueError):
        generate_bodies(10, malformed_rate=1.5)
