"""Synthetic user-login SQS bodies with the real traffic's shape, so tests and demos own their data.

Shape (from the production stream): a flat JSON object with keys in the order of `LOGIN_KEYS`, `locale`
null in ~30% of messages, three `app_version` spellings, and IPs / device ids shared between users.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence

LOGIN_KEYS = ("user_id", "app_version", "device_type", "ip", "locale", "device_id")
MALFORMED_KINDS = ("not_json", "wrong_message_type", "bad_app_version", "missing_ip")
_LOCALES = (
    "US", "RU", "GB", "DE", "FR", "IN", "BR", "CN", "JP", "MX", "CA", "AU", "ES", "IT", "NL",
    "PL", "TR", "UA", "KR", "ID", "NG", "ZA", "AR", "SE", "PH", "VN", "EG", "PK", "TH", "NZ",
)  # fmt: skip


def _random_ip(rng: random.Random) -> str:
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _random_device_id(rng: random.Random) -> str:
    return f"{rng.randrange(1000):03d}-{rng.randrange(100):02d}-{rng.randrange(10000):04d}"


def _random_app_version(rng: random.Random) -> str:
    """X.Y.Z ~45%, X.YY ~36%, X.Y ~19%, like the real stream (so parsers must handle all three)."""
    major, roll = rng.randint(0, 9), rng.random()
    if roll < 0.45:
        return f"{major}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"
    if roll < 0.81:
        return f"{major}.{rng.randint(10, 99)}"
    return f"{major}.{rng.randint(0, 9)}"


def generate_login(
    rng: random.Random,
    *,
    ip_pool: Sequence[str] | None = None,
    device_id_pool: Sequence[str] | None = None,
) -> dict[str, str | None]:
    """One valid login event; pass pools to make IPs / device ids repeat across users."""
    return {
        "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "app_version": _random_app_version(rng),
        "device_type": rng.choice(("android", "ios")),
        "ip": rng.choice(ip_pool) if ip_pool else _random_ip(rng),
        "locale": None if rng.random() < 0.3 else rng.choice(_LOCALES),
        "device_id": rng.choice(device_id_pool) if device_id_pool else _random_device_id(rng),
    }


def _malformed_body(kind: str, login: dict[str, str | None]) -> str:
    if kind == "not_json":
        return "not json {"
    if kind == "wrong_message_type":
        return json.dumps({"foo": "oops_wrong_msg_type", "bar": "123"})
    if kind == "bad_app_version":
        return json.dumps({**login, "app_version": f"{login['app_version']}-beta"})
    return json.dumps({k: v for k, v in login.items() if k != "ip"})


def generate_bodies(count: int, *, seed: int | None = None, malformed_rate: float = 0.01) -> list[str]:
    """`count` SQS message bodies, deterministic per seed; exactly round(count*malformed_rate) malformed.

    Malformed bodies cycle through MALFORMED_KINDS at random positions, so every error path is exercised.
    """
    if count < 0 or not 0.0 <= malformed_rate <= 1.0:
        raise ValueError("count must be >= 0 and malformed_rate within [0, 1]")
    rng = random.Random(seed)
    pool_size = max(1, count // 3)  # ~3 users per IP / device id on average: duplicates must exist
    ip_pool = [_random_ip(rng) for _ in range(pool_size)]
    device_id_pool = [_random_device_id(rng) for _ in range(pool_size)]
    malformed_at = sorted(rng.sample(range(count), round(count * malformed_rate)))
    kind_of = {pos: MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i, pos in enumerate(malformed_at)}
    bodies = []
    for pos in range(count):
        login = generate_login(rng, ip_pool=ip_pool, device_id_pool=device_id_pool)
        bodies.append(_malformed_body(kind_of[pos], login) if pos in kind_of else json.dumps(login))
    return bodies
