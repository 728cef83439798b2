"""Pseudonymising IP addresses and device ids behind one small interface, in two modes.

Tokens are keyed: a plain hash is no protection because every IPv4 address can be enumerated and
hashed in well under a second. Equal inputs give equal tokens in both modes, so analysts can still
count duplicates without seeing values.

- `hmac` (default): HMAC-SHA256 of the canonical value, 64 lower-case hex digits. One-way.
- `siv`: deterministic authenticated encryption, AES-SIV (RFC 5297), so key holders can recover the
  value (`fetch-etl reveal`) and re-key it (`fetch-etl rotate-key`). See `SivMasker`.
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
from typing import ClassVar, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_KEY_BYTES = 32
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")

PiiField = Literal["ip", "device_id"]
PII_FIELDS: tuple[PiiField, ...] = ("ip", "device_id")


class MaskingKeyError(ValueError):
    """The masking key is missing or unusable; the message says what to fix."""


class TokenError(ValueError):
    """A token cannot be revealed (not ours, wrong key or column, altered). Never quotes a value or token."""


class Masker(Protocol):
    """What the pipeline needs from a masking mode."""

    mode: str
    key_id: str

    def mask(self, value: str, field: PiiField) -> str:
        """Token for an already-canonical value of `field`."""
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
class TokenShape:
    """What a mode's tokens look like: a length range and an anchored `pattern`, valid both in Python and in
    PostgreSQL's `~`. Lengths are kept out of the pattern: PostgreSQL's regex engine is slow on counted
    repeats such as `{64}` (about 12x slower on this table's tokens)."""

    pattern: str
    shortest: int
    longest: int
    description: str

    def matches(self, token: str) -> bool:
        return self.shortest <= len(token) <= self.longest and re.fullmatch(self.pattern, token) is not None

    def sql(self) -> tuple[str, int, int]:
        return self.pattern, self.shortest, self.longest


@dataclass(frozen=True)
class HmacMasker:
    """HMAC-SHA256 of the canonical value, hex: one-way and deterministic."""

    key: bytes
    mode: str = "hmac"
    # HMAC-SHA256 as hex.
    shape: ClassVar[TokenShape] = TokenShape(r"^[0-9a-f]+$", 64, 64, "64 lowercase hex digits")

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.key)

    def mask(self, value: str, field: PiiField = "ip") -> str:
        """`field` is not mixed in: these tokens predate the second mode and must stay exactly as they are."""
        return hmac.digest(self.key, value.encode("utf-8"), "sha256").hex()

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return f"HmacMasker(key_id={self.key_id!r})"


SIV_PREFIX = "s1."  # mode `siv`, token format version 1
SIV_KEY_INFO = b"fetch-etl pii aes-siv key v1"
SIV_TAG_BYTES = 16
# Tokens must fit varchar(256): len("s1.") + base64url(16 + n bytes) <= 256 holds for n <= 173.
SIV_MAX_VALUE_BYTES = 173
_B64URL_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def derive_siv_key(key: bytes) -> bytes:
    """The 512-bit AES-SIV key (AES-256-SIV) from the master key: HKDF-SHA256, no salt, fixed info.

    One PII_MASKING_KEY serves both modes, and the HMAC key never doubles as a cipher key.
    """
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=SIV_KEY_INFO).derive(key)


def siv_associated_data(field: PiiField) -> list[bytes]:
    """Binds a token to its column, so an IP token cannot be passed off as a device id token."""
    if field not in PII_FIELDS:
        raise ValueError(f"unknown PII field {field!r}; expected one of {', '.join(PII_FIELDS)}")
    return [f"fetch-etl/s1/{field}".encode("ascii")]


def token_mode(token: str) -> str | None:
    """`siv`, `hmac` or None: which mode a token claims (a `siv` prefix, or the whole hmac shape) made it.

    A prefix is enough for `siv`, so that `decode_siv_token` can say what is wrong with a damaged token; the
    check `tokens_well_formed` wants the whole shape (checks.shape_mode)."""
    if token.startswith(SIV_PREFIX):
        return "siv"
    return "hmac" if HmacMasker.shape.matches(token) else None


def decode_siv_token(token: str) -> bytes:
    """The SIV and ciphertext inside a token; only the one canonical spelling of each token is accepted."""
    mode = token_mode(token)
    if mode == "hmac":
        raise TokenError("this is an hmac token (64 hex digits): HMAC-SHA256 is one-way, so it cannot be revealed")
    body = token[len(SIV_PREFIX) :] if mode == "siv" else ""
    if not _B64URL_RE.match(body):
        raise TokenError(f"this is not a fetch-etl siv token ({SIV_PREFIX} followed by URL-safe base64)")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("this siv token is not valid base64; it was truncated or altered") from None
    # Unused bits in the last character would let two spellings decode alike: refuse all but one.
    if len(data) < SIV_TAG_BYTES or _b64url(data) != body:
        raise TokenError("this siv token is malformed; it was truncated or altered")
    return data


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SivMasker:
    """AES-SIV (RFC 5297) of the canonical value: deterministic, authenticated, reversible with the key.

    Token: `s1.` + unpadded URL-safe base64 of SIV (16 bytes) || ciphertext; associated data names the
    field. Equal values of a field give equal tokens, so duplicates stay countable.
    """

    mode = "siv"
    # 's1.' + unpadded URL-safe base64 of SIV (16 bytes) || ciphertext; at most 256 characters in all.
    shape: ClassVar[TokenShape] = TokenShape(
        r"^s1\.[A-Za-z0-9_-]+$", 25, 256, "'s1.' then at least 22 URL-safe base64 characters"
    )
    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        self._aead = AESSIV(derive_siv_key(key))
        self.key_id = key_fingerprint(key)

    def mask(self, value: str, field: PiiField) -> str:
        plaintext = value.encode("utf-8")
        if len(plaintext) > SIV_MAX_VALUE_BYTES:
            raise ValueError(
                f"a {field} value longer than {SIV_MAX_VALUE_BYTES} UTF-8 bytes would give a token over 256 characters"
            )
        return SIV_PREFIX + _b64url(self._aead.encrypt(plaintext, siv_associated_data(field)))

    def reveal(self, token: str, field: PiiField) -> str:
        """The clear value; TokenError (naming neither value nor token) when it cannot be authenticated."""
        data = decode_siv_token(token)
        try:
            return self._aead.decrypt(data, siv_associated_data(field)).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise TokenError(
                f"this token does not decrypt as {field} with key {self.key_id}: it was made with another key, "
                "belongs to another column, or was altered"
            ) from None

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return f"SivMasker(key_id={self.key_id!r})"


# The modes and their token shapes (read by the tokens_well_formed check): to add a mode, add its masker here.
TOKEN_SHAPES: dict[str, TokenShape] = {"hmac": HmacMasker.shape, "siv": SivMasker.shape}
MASKING_MODES = tuple(TOKEN_SHAPES)


def build_masker(mode: str, key: bytes) -> Masker:
    """The masker for `PII_MASKING_MODE`."""
    if mode == "hmac":
        return HmacMasker(key)
    if mode == "siv":
        return SivMasker(key)
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
            token = cache[canonical] = masker.mask(canonical, "ip")
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
            token = cache[canonical] = masker.mask(canonical, "device_id")
        tokens.append(token)
    return tokens


def mask_optional(masker: Masker, values: Iterable[str | None], field: PiiField) -> list[str | None]:
    """Tokens for a column with gaps (the ip/device_id of rejected messages); None stays None."""
    canonical = (lambda v: canonical_ip(v)[0]) if field == "ip" else canonical_device_id
    return [None if value is None else masker.mask(canonical(value), field) for value in values]
