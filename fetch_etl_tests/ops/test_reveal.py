"""`fetch-etl reveal` end to end: siv tokens loaded by a real run, decrypted for the operator, audited once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fetch_etl.cli import main
from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.masking import SivMasker, TokenError, key_fingerprint
from fetch_etl.ops import pii_admin
from fetch_etl_tests.helpers import (
    TEST_KEY_HEX,
    clean_env,
    execute,
    fetch_all,
    login_body,
    resources,
    run_pipeline,
    send,
)

BIN = Path(sys.executable).parent
KEY = bytes.fromhex(TEST_KEY_HEX)
OTHER_KEY_HEX = "a5" * 32
# Unique markers: if one shows up in a log, audit line or error, a clear value leaked.
IP_A = "198.51.100.231"
IP_B_SENT, IP_B = "2001:0DB8:0:0:0:0:C0:FFEE", "2001:db8::c0:ffee"
DEV_A, DEV_B, DEV_C = "dev-rv-aa11", "dev-rv-bb22", "dev-rv-cc33"
IP_REJECTED, DEV_REJECTED = "198.51.100.239", "dev-rv-rj99"
CLEAR = (IP_A, IP_B, IP_B_SENT, DEV_A, DEV_B, DEV_C, IP_REJECTED, DEV_REJECTED)


@pytest.fixture
def siv_rows(sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str) -> dict[str, str]:
    """Three logins and one reject loaded in siv mode by a real run; returns the ip tokens by name."""
    send(
        sqs_client,
        queue_urls.queue_url,
        [
            login_body(user_id="user-a", ip=IP_A, device_id=DEV_A),
            login_body(user_id="user-a", ip=IP_B_SENT, device_id=DEV_B),
            login_body(user_id="user-b", ip=IP_A, device_id=DEV_C),
            login_body(user_id="user-r", ip=IP_REJECTED, device_id=DEV_REJECTED, app_version="bad"),
        ],
    )
    run_pipeline(resources(sqs_endpoint, queue_urls, database_url, mode="siv"))
    tokens = dict(fetch_all(database_url, "SELECT masked_device_id, masked_ip FROM user_logins"))
    masker = SivMasker(KEY)
    by_device = {masker.reveal(device, "device_id"): (device, ip) for device, ip in tokens.items()}
    return {"ip_a": by_device[DEV_A][1], "ip_b": by_device[DEV_B][1], "device_a": by_device[DEV_A][0]}


def _reveal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fetch-etl"), "reveal", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _reveal_in_process(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The same command through click in this process (start-up of the real CLI is ~6 s); (exit, output)."""
    result = CliRunner().invoke(main, ["reveal", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def _audit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "AUDIT reveal" in line]


def _assert_no_clear_values(text: str, *tokens: str) -> None:
    for value in (*CLEAR, *tokens):
        assert value.lower() not in text.lower(), value


def test_reveal_prints_the_original_values_and_audits_each_call_once(
    siv_rows: dict[str, str], database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    audit_file = tmp_path / "audit.log"
    env = clean_env(
        DATABASE_URL=database_url,
        PII_MASKING_MODE="siv",
        PII_MASKING_KEY=TEST_KEY_HEX,
        FETCH_ETL_AUDIT_LOG=str(audit_file),
    )

    by_token = _reveal(siv_rows["ip_a"], siv_rows["ip_b"], env=env)  # the real command: its stderr is the log
    user_exit, by_user = _reveal_in_process("--user-id", "user-a", env=env)
    ip_exit, by_ip = _reveal_in_process("--where-masked-ip", siv_rows["ip_a"], "--limit", "1", env=env)

    assert (by_token.returncode, user_exit, ip_exit) == (0, 0, 0), by_token.stderr
    assert IP_A in by_token.stdout and IP_B in by_token.stdout  # the canonical spelling of the IPv6 sent
    assert by_token.stdout.count(" ip ") == 2
    assert {IP_A, IP_B, DEV_A, DEV_B} <= set(by_user.split()) and "2 rows" in by_user
    assert DEV_C not in by_user and IP_REJECTED not in by_user
    assert "1 rows" in by_ip and IP_A in by_ip

    (token_audit,) = _audit_lines(by_token.stderr)
    user_audit, ip_audit = [r.getMessage() for r in caplog.records if r.name == "fetch_etl.audit"]
    assert "outcome=ok values=2 rows=0 selector=tokens(2) mode=siv" in token_audit
    assert "outcome=ok values=4 rows=2 selector=rows(user_id=user-a; limit 100)" in user_audit
    assert "values=2 rows=1 selector=rows(masked_ip=<token>; limit 1)" in ip_audit
    assert f"key_id={key_fingerprint(KEY)}" in token_audit and "by os-user " in token_audit
    logged = "\n".join(r.getMessage() for r in caplog.records)
    _assert_no_clear_values(by_token.stderr + logged, *siv_rows.values())
    written = audit_file.read_text().splitlines()
    assert written == [line[line.index("AUDIT") :] for line in (token_audit, user_audit, ip_audit)]
    _assert_no_clear_values(audit_file.read_text(), *siv_rows.values())


def test_reveal_refuses_in_hmac_mode_and_audits_the_refusal(
    siv_rows: dict[str, str], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = clean_env(DATABASE_URL=database_url, PII_MASKING_KEY=TEST_KEY_HEX)  # PII_MASKING_MODE unset: hmac

    exit_code, output = _reveal_in_process(siv_rows["ip_a"], env=env)

    assert exit_code == 1
    assert "one-way" in output and "PII_MASKING_MODE=siv" in output
    assert IP_A not in output
    (audit,) = [r.getMessage() for r in caplog.records if r.name == "fetch_etl.audit"]
    assert "outcome=refused (hmac is one-way) values=0" in audit
    _assert_no_clear_values(output + audit, siv_rows["ip_a"])


@pytest.mark.parametrize(
    ("key_hex", "alter", "expected"),
    [
        (OTHER_KEY_HEX, lambda token: token, "does not decrypt as ip or device_id"),
        (TEST_KEY_HEX, lambda token: token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "token 1 of 1"),
        (TEST_KEY_HEX, lambda token: token[:-5], "token 1 of 1"),
    ],
    ids=["wrong-key", "tampered", "truncated"],
)
def test_reveal_fails_loudly_without_quoting_anything(
    siv_rows: dict[str, str],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    key_hex: str,
    alter: Any,
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = alter(siv_rows["ip_a"])

    with pytest.raises(TokenError, match=expected) as err:
        pii_admin.reveal(
            mode="siv", key=lambda: bytes.fromhex(key_hex), database_url=database_url, tokens=[token], audit_file=None
        )

    _assert_no_clear_values(str(err.value), token, siv_rows["ip_a"])
    audits = [r.getMessage() for r in caplog.records if r.name == "fetch_etl.audit"]
    assert len(audits) == 1 and "outcome=failed (TokenError) values=0" in audits[0]
    _assert_no_clear_values("\n".join(r.getMessage() for r in caplog.records), token, siv_rows["ip_a"])


def test_reveal_of_an_hmac_token_explains_it_is_one_way(database_url: str) -> None:
    hmac_token = "f0b76246dbaee26fe25b9bb0cc33eae2134c076ce9c22d64159ddd2fcb9dad8a"
    with pytest.raises(TokenError, match="one-way"):
        pii_admin.reveal(mode="siv", key=lambda: KEY, database_url=database_url, tokens=[hmac_token])


def test_reveal_of_rows_refuses_rows_on_another_key(siv_rows: dict[str, str], database_url: str) -> None:
    with pytest.raises(pii_admin.PiiAdminError, match=r"2 of the 2 selected rows were masked with another key") as err:
        pii_admin.reveal(
            mode="siv",
            key=lambda: bytes.fromhex(OTHER_KEY_HEX),
            database_url=database_url,
            selector=pii_admin.RowSelector(user_id="user-a"),
        )
    assert key_fingerprint(KEY) in str(err.value)
    _assert_no_clear_values(str(err.value), *siv_rows.values())


def test_reveal_of_a_tampered_stored_token_names_the_row_only(siv_rows: dict[str, str], database_url: str) -> None:
    cut = siv_rows["ip_b"][:-1]
    execute(database_url, "UPDATE user_logins SET masked_ip = %s WHERE masked_ip = %s", (cut, siv_rows["ip_b"]))
    ((message_id,),) = fetch_all(database_url, "SELECT message_id FROM user_logins WHERE masked_ip = %s", (cut,))
    with pytest.raises(TokenError, match=f"user_logins row {message_id}") as err:
        pii_admin.reveal(
            mode="siv", key=lambda: KEY, database_url=database_url, selector=pii_admin.RowSelector(user_id="user-a")
        )
    _assert_no_clear_values(str(err.value), *siv_rows.values())


def test_reveal_needs_a_selector(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url, PII_MASKING_MODE="siv", PII_MASKING_KEY=TEST_KEY_HEX)
    exit_code, output = _reveal_in_process(env=env)
    assert exit_code == 2 and "--user-id" in output
    exit_code, output = _reveal_in_process("s1.AAAA", "--user-id", "u", env=env)
    assert exit_code == 2 and "not both" in output
