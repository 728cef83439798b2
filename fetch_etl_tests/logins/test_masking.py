"""Keyed pseudonymisation of IPs and device ids: algorithm, canonical forms, keys (pure, no I/O but tmp)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetch_etl.logins.masking import (
    MIN_KEY_BYTES,
    HmacMasker,
    MaskingKeyError,
    build_masker,
    canonical_device_id,
    canonical_ip,
    key_fingerprint,
    load_key,
    mask_device_ids,
    mask_ips,
    parse_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# HMAC-SHA256(key=bytes(range(32)), msg=b"199.172.111.135"), computed once with the stdlib and frozen
# here, so a change of algorithm, encoding or key handling shows up as a failure.
KNOWN_IP = "199.172.111.135"
KNOWN_TOKEN = "f0b76246dbaee26fe25b9bb0cc33eae2134c076ce9c22d64159ddd2fcb9dad8a"
KNOWN_KEY_ID = "000b70aa928a"
TOKEN_RE = re.compile(r"[0-9a-f]{64}")
# A key whose base64 forms use the characters standard and URL-safe alphabets disagree on (+/ vs -_).
ODD_KEY = bytes([0xFB, 0xFF] * 16)


@pytest.fixture
def masker() -> HmacMasker:
    return HmacMasker(KEY)


# --- the algorithm --------------------------------------------------------------------------------


def test_known_answer_vector(masker: HmacMasker) -> None:
    expected = hmac.new(KEY, KNOWN_IP.encode(), hashlib.sha256).hexdigest()
    assert masker.mask(KNOWN_IP) == expected == KNOWN_TOKEN
    assert mask_ips(masker, [KNOWN_IP]).tokens == [KNOWN_TOKEN]
    assert mask_device_ids(masker, [KNOWN_IP]) == [KNOWN_TOKEN]


def test_values_are_encoded_as_utf8(masker: HmacMasker) -> None:
    value = "设备-😀"
    assert masker.mask(value) == hmac.new(KEY, value.encode("utf-8"), hashlib.sha256).hexdigest()


def test_tokens_are_deterministic_and_keyed() -> None:
    assert HmacMasker(KEY).mask(KNOWN_IP) == HmacMasker(bytes(KEY)).mask(KNOWN_IP)
    assert HmacMasker(OTHER_KEY).mask(KNOWN_IP) != KNOWN_TOKEN


@given(st.text())
def test_token_is_64_lowercase_hex(value: str) -> None:
    token = HmacMasker(KEY).mask(value)
    assert TOKEN_RE.fullmatch(token)
    assert len(token) <= 256  # the varchar(256) columns


@given(st.text(), st.text())
def test_distinct_inputs_give_distinct_tokens(a: str, b: str) -> None:
    masker = HmacMasker(KEY)
    assert (masker.mask(a) == masker.mask(b)) == (a == b)


@given(st.lists(st.ip_addresses().map(str), min_size=1, max_size=20))
def test_mask_ips_matches_per_value_masking(ips: list[str]) -> None:
    masker = HmacMasker(KEY)
    result = mask_ips(masker, ips)
    assert result.unparsed == 0
    assert result.tokens == [masker.mask(canonical_ip(ip)[0]) for ip in ips]
    assert len(set(result.tokens)) == len({canonical_ip(ip)[0] for ip in ips})


def test_not_a_plain_sha256_dictionary(masker: HmacMasker) -> None:
    ips = [KNOWN_IP, "192.0.2.1", "10.0.0.1", "127.0.0.1", "2001:db8::1", "8.8.8.8", "0.0.0.0"]
    tokens = set(mask_ips(masker, ips).tokens) | set(mask_device_ids(masker, ips))
    plain = {hashlib.sha256(ip.encode()).hexdigest() for ip in ips}
    plain |= {hashlib.sha256(canonical_ip(ip)[0].encode()).hexdigest() for ip in ips}
    plain |= {hashlib.sha256(KEY + ip.encode()).hexdigest() for ip in ips}
    assert tokens.isdisjoint(plain)
    assert len(tokens) == len(ips)


# --- canonical forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("2001:db8::1", "2001:0db8:0:0:0:0:0:1"),
        ("2001:db8::1", "2001:DB8::1"),
        ("2001:db8::1", "2001:db8:0000::0001"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        (" 192.0.2.1", "192.0.2.1"),
        ("192.0.2.1\n", "192.0.2.1"),
        ("\t2001:db8::1 \r\n", "2001:0db8::0001"),
    ],
)
def test_equivalent_ip_spellings_share_a_token(masker: HmacMasker, a: str, b: str) -> None:
    result = mask_ips(masker, [a, b])
    assert result.unparsed == 0
    assert result.tokens[0] == result.tokens[1]
    assert canonical_ip(a) == canonical_ip(b)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("2001:0db8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (" 199.172.111.135 ", "199.172.111.135"),
        ("::1", "::1"),
    ],
)
def test_canonical_ip(value: str, canonical: str) -> None:
    assert canonical_ip(value) == (canonical, True)


@pytest.mark.parametrize(
    ("a", "b"),
    [("192.0.2.1", "192.0.2.10"), ("::1", "127.0.0.1"), ("2001:db8::1", "2001:db8::2")],
)
def test_different_addresses_differ(masker: HmacMasker, a: str, b: str) -> None:
    tokens = mask_ips(masker, [a, b]).tokens
    assert tokens[0] != tokens[1]


def test_non_ip_inputs_are_masked_and_counted(masker: HmacMasker) -> None:
    values = ["not-an-ip", "192.0.2.1", "999.1.1.1", " not-an-ip ", "unknown", "2001:db8::1", "1.2.3"]
    result = mask_ips(masker, values)
    assert result.unparsed == 5
    assert len(result.tokens) == len(values)
    assert all(TOKEN_RE.fullmatch(t) for t in result.tokens)
    assert result.tokens[0] == result.tokens[3] == masker.mask("not-an-ip")  # stripped, then masked
    assert canonical_ip(" not-an-ip ") == ("not-an-ip", False)
    assert "not-an-ip" not in result.tokens


def test_mask_ips_accepts_any_iterable_and_empty(masker: HmacMasker) -> None:
    assert mask_ips(masker, iter([])).tokens == []
    assert mask_ips(masker, iter([])).unparsed == 0
    assert mask_ips(masker, (ip for ip in [KNOWN_IP])).tokens == [KNOWN_TOKEN]
    assert mask_device_ids(masker, iter([])) == []


def test_device_ids_ignore_surrounding_whitespace_only(masker: HmacMasker) -> None:
    tokens = mask_device_ids(masker, ["abc-123", "  abc-123\n", "ABC-123", "abc 123"])
    assert tokens[0] == tokens[1] == masker.mask("abc-123")
    assert len({tokens[0], tokens[2], tokens[3]}) == 3
    assert canonical_device_id("\tabc-123 ") == "abc-123"


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY.hex()}\n",
        " ".join(KEY.hex()[i : i + 8] for i in range(0, 64, 8)),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        base64.b64encode(KEY).decode().rstrip("=") + "\n",
    ],
    ids=["hex", "HEX", "hex-whitespace", "hex-grouped", "b64", "b64url", "b64url-unpadded", "b64-unpadded"],
)
def test_parse_key_forms(text: str) -> None:
    assert parse_key(text) == KEY


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(ODD_KEY).decode(),
        base64.urlsafe_b64encode(ODD_KEY).decode(),
        base64.urlsafe_b64encode(ODD_KEY).decode().rstrip("="),
        ODD_KEY.hex(),
    ],
    ids=["b64", "b64url", "b64url-unpadded", "hex"],
)
def test_parse_key_alphabets(text: str) -> None:
    assert "+" in base64.b64encode(ODD_KEY).decode()
    assert parse_key(text) == ODD_KEY


def test_parse_key_accepts_longer_keys() -> None:
    long_key = bytes(range(64))
    assert parse_key(long_key.hex()) == long_key
    assert parse_key(base64.b64encode(long_key).decode()) == long_key


@pytest.mark.parametrize(
    "text",
    [KEY[:31].hex(), KEY[:16].hex(), base64.b64encode(KEY[:31]).decode(), "00", "AAAA"],
    ids=["hex-31", "hex-16", "b64-31", "hex-1", "b64-3"],
)
def test_parse_key_rejects_short_keys(text: str) -> None:
    with pytest.raises(MaskingKeyError, match=str(MIN_KEY_BYTES)) as err:
        parse_key(text)
    assert MIN_KEY_BYTES == 32
    assert "32" in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "not a key!!!",
        "secret-passphrase-that-is-long-enough?",
        KEY.hex() + "!",
        "a" * 65,
        "@" * 44,
        "====",
    ],
)
def test_parse_key_rejects_garbage_clearly(text: str) -> None:
    with pytest.raises(MaskingKeyError, match=r"neither hex nor base64|bytes|odd number of digits") as err:
        parse_key(text)
    assert text.strip() not in str(err.value)  # the (mis-typed) key is never echoed


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_parse_key_rejects_empty(text: str) -> None:
    with pytest.raises(MaskingKeyError, match="empty"):
        parse_key(text)


@pytest.mark.parametrize("text", [KEY.hex()[:-1], "0x" + KEY.hex()], ids=["hex-63-chars", "hex-0x-prefix"])
def test_parse_key_rejects_mistyped_hex_key(text: str) -> None:
    with pytest.raises(MaskingKeyError):
        parse_key(text)


def test_load_key_prefers_key_over_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(OTHER_KEY.hex())
    assert load_key(KEY.hex(), str(key_file)) == KEY
    assert load_key(KEY.hex(), str(tmp_path / "missing")) == KEY


def test_load_key_reads_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex() + "\n")
    assert load_key(None, str(key_file)) == KEY
    assert load_key("", str(key_file)) == KEY  # an empty PII_MASKING_KEY counts as unset
    key_file.write_text(base64.b64encode(OTHER_KEY).decode() + "\n")
    assert load_key(None, str(key_file)) == OTHER_KEY


def test_load_key_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    with pytest.raises(MaskingKeyError) as err:
        load_key(None, str(missing))
    assert str(missing) in str(err.value)
    assert "PII_MASKING_KEY_FILE" in str(err.value)


def test_load_key_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(MaskingKeyError, match="PII_MASKING_KEY_FILE"):
        load_key(None, str(tmp_path))


def test_load_key_bad_file_content(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("short")
    with pytest.raises(MaskingKeyError):
        load_key(None, str(key_file))


@pytest.mark.parametrize(("key", "key_file"), [(None, None), ("", None), (None, ""), ("", "")])
def test_load_key_neither_given(key: str | None, key_file: str | None) -> None:
    with pytest.raises(MaskingKeyError, match="PII_MASKING_KEY"):
        load_key(key, key_file)


def test_load_key_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff" * 32)
    with pytest.raises(MaskingKeyError):
        load_key(None, str(key_file))


# --- key ids, repr, modes -------------------------------------------------------------------------


def test_key_fingerprint_is_short_stable_and_opaque(masker: HmacMasker) -> None:
    fingerprint = key_fingerprint(KEY)
    assert fingerprint == KNOWN_KEY_ID
    assert fingerprint == hmac.new(KEY, b"fetch-etl key id v1", hashlib.sha256).hexdigest()[:12]
    assert re.fullmatch(r"[0-9a-f]{8,16}", fingerprint)
    assert fingerprint not in KEY.hex() and KEY.hex() not in fingerprint
    assert fingerprint != KEY.hex()[: len(fingerprint)]
    assert key_fingerprint(OTHER_KEY) != fingerprint
    assert masker.key_id == fingerprint


@pytest.mark.parametrize("render", [repr, str, lambda m: f"{m}", lambda m: f"{m!r}"])
def test_masker_repr_hides_the_key(masker: HmacMasker, render: object) -> None:
    text = render(masker)  # type: ignore[operator]
    for form in (KEY.hex(), KEY.hex().upper(), repr(KEY), base64.b64encode(KEY).decode(), str(list(KEY))):
        assert form not in text
    assert KNOWN_KEY_ID in text


def test_build_masker_hmac() -> None:
    masker = build_masker("hmac", KEY)
    assert masker.mode == "hmac"
    assert masker.key_id == KNOWN_KEY_ID
    assert masker.mask(KNOWN_IP) == KNOWN_TOKEN


@pytest.mark.parametrize("mode", ["sha256", "plain", "", "none", "hmac-sha1"])
def test_build_masker_unknown_mode(mode: str) -> None:
    with pytest.raises(MaskingKeyError, match="hmac") as err:
        build_masker(mode, KEY)
    assert KEY.hex() not in str(err.value)
