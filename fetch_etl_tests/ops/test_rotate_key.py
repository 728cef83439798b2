"""`fetch-etl rotate-key` against real Postgres: 100k rows, interruptions, bad rows, the hmac refusal."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from fetch_etl.cli import main
from fetch_etl.logins.masking import HmacMasker, PiiField, SivMasker, TokenError
from fetch_etl.ops import pii_admin
from fetch_etl.warehouse.load import migrate
from fetch_etl.warehouse.locks import AdvisoryLock
from fetch_etl.warehouse.resource import PostgresResource
from fetch_etl_tests.helpers import clean_env, execute, fetch_all

BIN = Path(sys.executable).parent
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OLD, NEW = SivMasker(OLD_KEY), SivMasker(NEW_KEY)
Originals = dict[str, tuple[str, str]]


def _values(i: int, pool: int) -> tuple[str, str]:
    """The clear (ip, device_id) of row i: drawn from pools so tokens repeat, as in real traffic."""
    n = (i * 7919) % pool
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", f"{n % 1000:03d}-{n // 1000 % 100:02d}-{n % 9973:04d}"


def _fill(database_url: str, masker: SivMasker, logins: int, rejects: int = 0) -> Originals:
    """COPY rows masked with `masker` straight into both tables (no SQS); returns (ip, device_id) by message_id."""
    originals: Originals = {}
    pool = max(1, logins // 5)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        ip_cache: dict[str, str] = {}
        device_cache: dict[str, str] = {}
        with conn.cursor() as cur:
            with cur.copy(
                "COPY user_logins (message_id, user_id, device_type, masked_ip, masked_device_id, app_version, "
                "create_date, mask_key_id) FROM STDIN"
            ) as copy:
                for i in range(logins):
                    ip, device = originals[f"m-{i:07d}"] = _values(i, pool)
                    ip_token = ip_cache.get(ip) or ip_cache.setdefault(ip, masker.mask(ip, "ip"))
                    device_token = device_cache.get(device) or device_cache.setdefault(
                        device, masker.mask(device, "device_id")
                    )
                    row = (f"m-{i:07d}", f"user-{i % 997}", "android", ip_token, device_token, 2003000)
                    copy.write_row((*row, date(2024, 1, 1 + i % 28), masker.key_id))
            with cur.copy(
                "COPY user_logins_rejected (message_id, reason_code, reason, received_at, masked_ip, "
                "masked_device_id, mask_key_id) FROM STDIN"
            ) as copy:
                for i in range(rejects):
                    ip, device = originals[f"r-{i:07d}"] = _values(i, pool)
                    row = (f"r-{i:07d}", "invalid_app_version", "bad version", datetime.now(UTC))
                    copy.write_row((*row, masker.mask(ip, "ip"), masker.mask(device, "device_id"), masker.key_id))
    return originals


def _stored(database_url: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return fetch_all(
        database_url,
        "SELECT message_id, masked_ip, masked_device_id, mask_key_id FROM user_logins "
        "UNION ALL SELECT message_id, masked_ip, masked_device_id, mask_key_id FROM user_logins_rejected",
    )


def _assert_rows_decrypt(database_url: str, originals: Originals, *, only: SivMasker | None = None) -> Counter[str]:
    """Every row's tokens decrypt, with the key its mask_key_id names, to its original values; and with that key only.

    Returns how many rows are on each key id.
    """
    maskers = {OLD.key_id: OLD, NEW.key_id: NEW}
    revealed: dict[tuple[str, str, PiiField], str] = {}
    per_key: Counter[str] = Counter()
    for message_id, masked_ip, masked_device_id, key_id in _stored(database_url):
        assert key_id is not None and (only is None or key_id == only.key_id), (message_id, key_id)
        per_key[key_id] += 1
        for token, field_, original in (
            (masked_ip, "ip", originals[message_id][0]),
            (masked_device_id, "device_id", originals[message_id][1]),
        ):
            assert token is not None
            key = (key_id, token, field_)
            if key not in revealed:
                revealed[key] = maskers[key_id].reveal(token, field_)  # type: ignore[arg-type]
                other = NEW if key_id == OLD.key_id else OLD
                with pytest.raises(TokenError):
                    other.reveal(token, field_)  # type: ignore[arg-type]
            assert revealed[key] == original, message_id
    assert sum(per_key.values()) == len(originals)
    return per_key


def _duplicate_shape(database_url: str) -> list[tuple[int, ...]]:
    """The analyst views without their tokens: rotating must keep every duplicate group intact."""
    return sorted(
        fetch_all(
            database_url,
            "SELECT 0, logins, distinct_users FROM user_logins_duplicate_ips "
            "UNION ALL SELECT 1, logins, distinct_users FROM user_logins_duplicate_devices",
        )
    )


def test_rotate_key_rekeys_a_100k_row_table(database_url: str) -> None:
    started = time.perf_counter()
    originals = _fill(database_url, OLD, 100_000, rejects=500)
    filled = time.perf_counter()
    shape = _duplicate_shape(database_url)

    with PostgresResource(database_url=database_url).connect() as conn:
        result = pii_admin.rotate_key(conn, OLD, NEW)
    rotated = time.perf_counter()

    assert result.rekeyed == {"user_logins": 100_000, "user_logins_rejected": 500}
    assert result.pages == 20 + 1
    assert result.complete and result.hmac_rows == {"user_logins": 0, "user_logins_rejected": 0}
    assert _assert_rows_decrypt(database_url, originals, only=NEW) == {NEW.key_id: 100_500}
    assert _duplicate_shape(database_url) == shape and len(shape) > 1000
    print(  # shown with -s: fill (COPY) / rotate-key / verification seconds
        f"\n100k rotation: fill {filled - started:.1f} s, rotate-key {rotated - filled:.1f} s "
        f"({100_500 / (rotated - filled):,.0f} rows/s), verify {time.perf_counter() - rotated:.1f} s"
    )


class Interrupted(Exception):
    pass


def test_an_interrupted_rotation_finishes_when_run_again(database_url: str) -> None:
    originals = _fill(database_url, OLD, 2_000, rejects=100)
    seen: list[pii_admin.RotationProgress] = []

    def crash_after_three(progress: pii_admin.RotationProgress) -> None:
        seen.append(progress)
        if progress.page == 3:
            raise Interrupted

    with PostgresResource(database_url=database_url).connect() as conn, pytest.raises(Interrupted):
        pii_admin.rotate_key(conn, OLD, NEW, page_size=300, on_page=crash_after_three)

    assert [(p.table, p.page, p.rekeyed) for p in seen] == [("user_logins", n, 300 * n) for n in (1, 2, 3)]
    assert seen[-1].last_message_id == "m-0000899"
    assert _assert_rows_decrypt(database_url, originals) == {NEW.key_id: 900, OLD.key_id: 1_200}

    with PostgresResource(database_url=database_url).connect() as conn:
        resumed = pii_admin.rotate_key(conn, OLD, NEW, page_size=300)
        again = pii_admin.rotate_key(conn, OLD, NEW, page_size=300)

    assert resumed.rekeyed == {"user_logins": 1_100, "user_logins_rejected": 100}
    assert resumed.complete
    assert _assert_rows_decrypt(database_url, originals, only=NEW) == {NEW.key_id: 2_100}
    assert again.rekeyed == {"user_logins": 0, "user_logins_rejected": 0} and again.complete


def test_a_row_that_does_not_decrypt_stops_the_run_and_rolls_back_only_its_page(database_url: str) -> None:
    originals = _fill(database_url, OLD, 1_000)
    bad = "m-0000650"  # in the fourth page of 200
    execute(database_url, "UPDATE user_logins SET masked_ip = left(masked_ip, -1) WHERE message_id = %s", (bad,))

    with PostgresResource(database_url=database_url).connect() as conn:
        with pytest.raises(pii_admin.PiiAdminError, match=f"user_logins row {bad}: .*600 rows re-keyed") as err:
            pii_admin.rotate_key(conn, OLD, NEW, page_size=200)
        ip, device = originals[bad]
        assert ip not in str(err.value) and device not in str(err.value)
        keys = dict(conn.execute("SELECT mask_key_id, count(*) FROM user_logins GROUP BY 1").fetchall())
        assert keys == {NEW.key_id: 600, OLD.key_id: 400}, "pages 1-3 committed; page 4 rolled back whole"

        conn.execute("DELETE FROM user_logins WHERE message_id = %s", (bad,))
        resumed = pii_admin.rotate_key(conn, OLD, NEW, page_size=200)
    assert resumed.rekeyed["user_logins"] == 399 and resumed.complete
    del originals[bad]
    assert _assert_rows_decrypt(database_url, originals, only=NEW) == {NEW.key_id: 999}


def test_rows_rotate_key_cannot_touch_are_reported(database_url: str) -> None:
    originals = _fill(database_url, OLD, 10)
    hmac_token = HmacMasker(OLD_KEY).mask("192.0.2.1")  # a row loaded in hmac mode under the same key
    execute(database_url, "UPDATE user_logins SET masked_ip = %s WHERE message_id = 'm-0000003'", (hmac_token,))
    third = SivMasker(bytes(range(200, 232)))
    execute(
        database_url,
        "UPDATE user_logins SET masked_device_id = %s, mask_key_id = %s WHERE message_id = 'm-0000004'",
        (third.mask("abc", "device_id"), third.key_id),
    )

    with PostgresResource(database_url=database_url).connect() as conn:
        result = pii_admin.rotate_key(conn, OLD, NEW)

    assert result.rekeyed["user_logins"] == 8
    assert result.hmac_rows["user_logins"] == 1
    assert not result.complete
    assert result.left_on_other_keys["user_logins"] == {OLD.key_id: 1, third.key_id: 1}
    assert len(originals) == 10


def test_same_key_and_concurrent_runs_are_refused(database_url: str) -> None:
    _fill(database_url, OLD, 3)
    with PostgresResource(database_url=database_url).connect() as conn:
        with pytest.raises(pii_admin.PiiAdminError, match="same key"):
            pii_admin.rotate_key(conn, OLD, SivMasker(bytes(OLD_KEY)))
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (int(AdvisoryLock.ROTATION),))
            with pytest.raises(pii_admin.PiiAdminError, match="another rotate-key is running"):
                pii_admin.rotate_key(conn, OLD, NEW)
        assert pii_admin.rotate_key(conn, OLD, NEW).rekeyed["user_logins"] == 3


def _key_files(tmp_path: Path) -> tuple[Path, Path]:
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(OLD_KEY.hex() + "\n")
    new_file.write_text(NEW_KEY.hex() + "\n")
    return old_file, new_file


def test_rotate_key_command(database_url: str, tmp_path: Path) -> None:
    originals = _fill(database_url, OLD, 1_200, rejects=30)
    old_file, new_file = _key_files(tmp_path)
    env = clean_env(
        DATABASE_URL=database_url,
        PII_MASKING_MODE="siv",
        PII_MASKING_OLD_KEY_FILE=str(old_file),
        PII_MASKING_NEW_KEY_FILE=str(new_file),
    )

    result = subprocess.run(
        [str(BIN / "fetch-etl"), "rotate-key", "--batch-size", "500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "| user_logins          |           1200 |" in result.stdout
    assert "1230 rows in 4 pages" in result.stdout
    assert f"from key {OLD.key_id} to key {NEW.key_id}" in result.stderr
    assert OLD_KEY.hex() not in result.stderr + result.stdout and NEW_KEY.hex() not in result.stderr + result.stdout
    assert _assert_rows_decrypt(database_url, originals, only=NEW) == {NEW.key_id: 1_230}
    ip, device = originals["m-0000001"]
    assert ip not in result.stderr + result.stdout and device not in result.stderr + result.stdout


def test_rotate_key_command_refuses_hmac_and_explains(database_url: str, tmp_path: Path) -> None:
    old_file, new_file = _key_files(tmp_path)
    env = clean_env(DATABASE_URL=database_url)  # PII_MASKING_MODE unset: hmac
    args = ["rotate-key", "--old-key-file", str(old_file), "--new-key-file", str(new_file)]

    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)

    assert result.exit_code == 1
    assert "cannot be re-keyed" in result.output and "original values" in result.output
    assert "overlap window" in result.output


def test_rotate_key_command_fails_when_rows_remain_on_other_keys(database_url: str, tmp_path: Path) -> None:
    _fill(database_url, OLD, 5)
    execute(database_url, "UPDATE user_logins SET mask_key_id = 'someoldkey00' WHERE message_id = 'm-0000002'")
    old_file, new_file = _key_files(tmp_path)
    args = ["rotate-key", "--old-key-file", str(old_file), "--new-key-file", str(new_file)]

    result = CliRunner().invoke(main, args, env=clean_env(DATABASE_URL=database_url, PII_MASKING_MODE="siv"))

    assert result.exit_code == 1
    assert "someoldkey00" in result.output and "remain" in result.output
