"""Pseudonymising IP addresses and device ids behind one small interface.

Tokens are keyed (HMAC-SHA256 with a secret key): a plain hash is no protection because every IPv4
address can be enumerated and hashed in well under a second. Equal inputs give equal tokens, so
analysts can still count duplicates without seeing values.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MIN_KEY_BYTES = 32
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")


class MaskingKeyError(ValueError):
    """The masking key is missing or unusable; the message says what to fix."""


class Masker(Protocol):
    """What the pipeline needs from a masking mode."""

    mode: str
    key_id: str

    def mask(self, value: str) -> str:
        """Token for an already-canonical value."""
        ...


def canonical_ip(value: str) -> tuple[str, bool]:
    """One spelling per address (IPv6 compressed, IPv4-mapped IPv6 as IPv4); (text, parsed?)."""
    text = value.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text, False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), True


def canonical_device_id(value: str) -> str:
    """Device ids differ only by surrounding whitespace in practice."""
    return value.strip()


def parse_key(text: str) -> bytes:
    """Decode a key given as hex or base64 (standard or URL-safe); at least 32 bytes."""
    cleaned = "".join(text.split())
    if not cleaned:
        raise MaskingKeyError("the masking key is empty")
    if cleaned[:2].lower() == "0x":
        raise MaskingKeyError("write the masking key as plain hex digits, without a 0x prefix")
    if _HEX_RE.match(cleaned):
        if len(cleaned) % 2:
            raise MaskingKeyError("the masking key looks like hex but has an odd number of digits")
        key = bytes.fromhex(cleaned)
    else:
        try:
            padded = cleaned + "=" * (-len(cleaned) % 4)
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise MaskingKeyError("the masking key is neither hex nor base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise MaskingKeyError(
            f"the masking key has {len(key)} bytes; at least {MIN_KEY_BYTES} are required "
            "(generate one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def load_key(key: str | None, key_file: str | None) -> bytes:
    """The key from PII_MASKING_KEY, else from the file PII_MASKING_KEY_FILE names."""
    if key:
        return parse_key(key)
    if key_file:
        path = Path(key_file)
        try:
            return parse_key(path.read_text(encoding="ascii"))
        except UnicodeDecodeError:
            raise MaskingKeyError(
                f"the masking key file {path} is binary; it must hold the key as hex or base64 text"
            ) from None
        except OSError as err:
            raise MaskingKeyError(
                f"cannot read the masking key file {path} named by PII_MASKING_KEY_FILE ({err.strerror})"
            ) from None
    raise MaskingKeyError(
        "no masking key: set PII_MASKING_KEY (hex or base64, >= 32 bytes) or PII_MASKING_KEY_FILE "
        "to a file holding one; nothing was received from the queue"
    )


def key_fingerprint(key: bytes) -> str:
    """A short id that names the key in the data (for rotations) without revealing it."""
    return hmac.digest(key, b"fetch-etl key id v1", "sha256").hex()[:12]


@dataclass(frozen=True)
class HmacMasker:
    """HMAC-SHA256 of the canonical value, hex: one-way and deterministic."""

    key: bytes
    mode: str = "hmac"

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.key)

    def mask(self, value: str) -> str:
        return hmac.digest(self.key, value.encode("utf-8"), "sha256").hex()

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return f"HmacMasker(key_id={self.key_id!r})"


MASKING_MODES = ("hmac",)


def build_masker(mode: str, key: bytes) -> Masker:
    """The masker for `PII_MASKING_MODE`."""
    if mode == "hmac":
        return HmacMasker(key)
    raise MaskingKeyError(f"unknown PII_MASKING_MODE {mode!r}; expected one of {', '.join(MASKING_MODES)}")


@dataclass(frozen=True)
class MaskedValues:
    tokens: list[str]
    unparsed: int


def mask_ips(masker: Masker, values: Iterable[str]) -> MaskedValues:
    """Tokens for IPs after canonicalisation; counts the inputs that are not IP addresses."""
    tokens: list[str] = []
    unparsed = 0
    cache: dict[str, str] = {}
    for value in values:
        canonical, parsed = canonical_ip(value)
        unparsed += not parsed
        token = cache.get(canonical)
        if token is None:
            token = cache[canonical] = masker.mask(canonical)
        tokens.append(token)
    return MaskedValues(tokens, unparsed)


def mask_device_ids(masker: Masker, values: Iterable[str]) -> list[str]:
    """Tokens for device ids after canonicalisation."""
    cache: dict[str, str] = {}
    tokens: list[str] = []
    for value in values:
        canonical = canonical_device_id(value)
        token = cache.get(canonical)
        if token is None:
            token = cache[canonical] = masker.mask(canonical)
        tokens.append(token)
    return tokens
