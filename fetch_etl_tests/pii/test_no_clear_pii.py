"""Leak scan: clear IPs, device ids and stray PII never reach Dagster's storage, Postgres or the logs.

Every IP and device id sent is a marker that cannot occur by chance; after a real run on a persistent
Dagster instance (SQLite storage, compute logs on disk) every byte the run left behind is searched.
The scans run once per masking mode (hmac and siv).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult
from psycopg import sql

from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.masking import MASKING_MODES, PiiField, build_masker
from fetch_etl_tests.helpers import (
    TEST_KEY_HEX,
    execute,
    fetch_all,
    login_body,
    metadata,
    resources,
    run_pipeline,
    send,
)

# Valid logins: 12 IPv4, 8 IPv6 sent in a non-canonical spelling, 4 IPv4-mapped IPv6, each with its own device id.
IPV4 = [f"203.0.113.{n}" for n in range(171, 183)]
IPV6_SENT = [f"2001:0DB8:0000:0000:0000:0000:BEEF:{n:04X}" for n in range(0x71, 0x79)]
IPV6_CANONICAL = [f"2001:db8::beef:{n:x}" for n in range(0x71, 0x79)]
MAPPED_SENT = [f"::ffff:198.51.100.{n}" for n in range(171, 175)]
MAPPED_CANONICAL = [f"198.51.100.{n}" for n in range(171, 175)]
VALID_IPS = [*IPV4, *IPV6_SENT, *MAPPED_SENT]
VALID_DEVICES = [f"987-65-43{n:02d}" for n in range(len(VALID_IPS))]
# Messages that are rejected (or carry an unknown key) but still hold an IP and a device id.
REJECT_IPS = [f"203.0.113.{n}" for n in range(191, 199)]
REJECT_DEVICES = [f"987-65-44{n:02d}" for n in range(len(REJECT_IPS))]
EMAIL = "pii.marker.k7q3@example.invalid"
WIRE_LOGGERS = ("botocore", "urllib3")
DEVICE_CONTROL = "987-65-4999"  # never sent: only ever planted by the positive controls

MARKERS: list[str] = [
    *VALID_IPS,
    *IPV6_CANONICAL,
    *MAPPED_CANONICAL,
    *VALID_DEVICES,
    *REJECT_IPS,
    *REJECT_DEVICES,
    EMAIL,
]


def _bodies() -> tuple[list[str], int]:
    """(bodies, how many are valid logins)."""
    valid = [login_body(ip=ip, device_id=device) for ip, device in zip(VALID_IPS, VALID_DEVICES, strict=True)]
    valid.append(login_body(ip=IPV4[0], device_id=f"  {VALID_DEVICES[0]} ", email=EMAIL))  # unknown key: dropped
    ips, devices = REJECT_IPS, REJECT_DEVICES
    rejected = [
        login_body(ip=ips[0], device_id=devices[0], app_version="2.3.0-beta"),
        login_body(ip=ips[1], device_id=devices[1], user_id="u" * 129),
        login_body(ip=ips[2], device_id=devices[2], app_version="2.3.0-beta", email=EMAIL),
        login_body(ip=[ips[3]], device_id=devices[3]),
        login_body(ip=ips[4], device_id=devices[4], locale=f"{ips[4]}|{devices[4]}|{EMAIL}"),
        login_body(ip=ips[5], device_id=devices[5])[:-1],  # truncated: not JSON
        json.dumps({"ip": ips[6], "device_id": devices[6], "email": EMAIL})[:-1] + f', "ip": "{ips[6]}"}}',
        json.dumps([ips[7], devices[7], EMAIL]),
    ]
    return [*valid, *rejected], len(valid)


def _needles(markers: Iterable[str]) -> dict[str, bytes]:
    """Each marker as lower-case UTF-8, for a case-insensitive byte search."""
    return {marker: marker.lower().encode("utf-8") for marker in markers}


def find_markers_in_files(root: Path, markers: Iterable[str]) -> dict[str, list[str]]:
    """{marker: [files under root holding it]}, reading every file (SQLite databases included) as bytes."""
    needles = _needles(markers)
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes().lower()
        for marker, needle in needles.items():
            if needle in content:
                found.setdefault(marker, []).append(str(path.relative_to(root)))
    return found


def find_markers_in_text(text: str, markers: Iterable[str]) -> list[str]:
    lowered = text.lower()
    return [marker for marker in markers if marker.lower() in lowered]


def dump_public_schema(database_url: str) -> dict[str, str]:
    """{table or view: every row as text} for everything in schema public."""
    dump: dict[str, str] = {}
    with psycopg.connect(database_url) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"
            )
        ]
        for name in names:
            query = sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier("public", name))
            dump[name] = "\n".join(row[0] for row in conn.execute(query))
    return dump


def _token(mode: str, value: str, field: PiiField) -> str:
    """The token the pipeline stores for an already-canonical value."""
    return build_masker(mode, bytes.fromhex(TEST_KEY_HEX)).mask(value, field)


MODES = pytest.mark.parametrize("mode", MASKING_MODES)


@pytest.fixture
def restore_logger_levels() -> Iterator[None]:
    """Dagster's python_logs setting re-levels the loggers it manages for the rest of the process; undo that."""
    loggers = [logging.getLogger(name) for name in ("", *WIRE_LOGGERS, "dagster", "fetch_etl")]
    levels = [logger.level for logger in loggers]
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run_marked_batch(
    home: Path,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
    mode: str,
    **overrides: Any,
) -> ExecuteInProcessResult:
    """Send the marker batch and materialize it on a persistent instance (SQLite + compute logs) in `home`."""
    home.mkdir()
    bodies, valid = _bodies()
    send(sqs_client, queue_urls.queue_url, bodies)
    with DagsterInstance.local_temp(tempdir=str(home), overrides=overrides or None) as instance:
        result = run_pipeline(resources(sqs_endpoint, queue_urls, database_url, mode=mode), instance=instance)
    loaded = metadata(result)
    assert (loaded["received"], loaded["loaded"], loaded["rejected"]) == (len(bodies), valid, len(bodies) - valid)
    return result


@MODES
def test_no_clear_pii_in_dagster_home_postgres_or_logs(
    mode: str,
    tmp_path: Path,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("fetch_etl", "dagster"):
        caplog.set_level(logging.DEBUG, logger=name)
    home = tmp_path / "dagster_home"

    run_id = _run_marked_batch(home, sqs_endpoint, sqs_client, queue_urls, database_url, mode).run_id
    captured = capfd.readouterr()

    # 1. Dagster's storage: run and event-log SQLite databases, compute logs, anything else written there.
    compute_logs = [p for p in home.rglob("*") if p.is_file() and p.suffix in (".err", ".out")]
    assert compute_logs, f"the run wrote no compute logs under {home}"
    assert any(b"loadable" in p.read_bytes() for p in compute_logs), "compute logs hold the run's log lines"
    assert any(run_id.encode() in p.read_bytes() for p in home.rglob("*.db")), "the run is recorded in SQLite"
    assert find_markers_in_files(home, MARKERS) == {}
    with compute_logs[0].open("a", encoding="utf-8") as planted:  # positive control on this very run's files
        planted.write(f"planted {DEVICE_CONTROL}\n")
    assert find_markers_in_files(home, [*MARKERS, DEVICE_CONTROL]) == {
        DEVICE_CONTROL: [str(compute_logs[0].relative_to(home))]
    }

    # 2. Postgres: every table and view, every row.
    dump = dump_public_schema(database_url)
    views = {"user_logins_duplicate_ips", "user_logins_duplicate_devices"}
    assert set(dump) >= {"user_logins", "user_logins_rejected", *views}
    everything = "\n".join(dump.values())
    assert find_markers_in_text(everything, MARKERS) == []
    assert EMAIL not in everything and "example.invalid" not in everything
    plain_hashes = {hashlib.sha256(m.encode("utf-8")).hexdigest() for m in MARKERS}
    plain_hashes |= {hashlib.sha256(m.lower().encode("utf-8")).hexdigest() for m in MARKERS}
    assert not [h for h in plain_hashes if h in everything], "a token is a plain, unkeyed SHA-256"
    # ...while the keyed tokens of the canonical values are there: the scan really saw the loaded rows.
    assert _token(mode, IPV6_CANONICAL[0], "ip") in dump["user_logins"]
    assert _token(mode, MAPPED_CANONICAL[0], "ip") in dump["user_logins"]
    assert _token(mode, IPV4[0], "ip") in dump["user_logins_duplicate_ips"]
    assert _token(mode, VALID_DEVICES[0], "device_id") in dump["user_logins_duplicate_devices"]
    # Rejects are stored with tokens of their ip/device_id where those were strings, never the values.
    assert _token(mode, REJECT_IPS[0], "ip") in dump["user_logins_rejected"]
    assert _token(mode, REJECT_DEVICES[3], "device_id") in dump["user_logins_rejected"]

    # 3. What the process printed (Dagster's console log included) and logged through Python logging.
    # botocore's DEBUG wire logs quote every payload: see test_debug_python_log_capture_keeps_message_bodies_out_of...
    assert find_markers_in_text(captured.out, MARKERS) == []
    assert find_markers_in_text(captured.err, MARKERS) == []
    assert "loadable" in captured.err, "the run's console output was captured"
    records = [r for r in caplog.records if not r.name.startswith(WIRE_LOGGERS)]
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG logging was captured"
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records)
    assert find_markers_in_text(logged, MARKERS) == []


@MODES
def test_debug_python_log_capture_keeps_message_bodies_out_of_dagster_storage(
    mode: str,
    tmp_path: Path,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
    restore_logger_levels: None,
) -> None:
    home = tmp_path / "dagster_home"
    python_logs = {"python_logs": {"managed_python_loggers": ["root"], "python_log_level": "DEBUG"}}

    _run_marked_batch(home, sqs_endpoint, sqs_client, queue_urls, database_url, mode, **python_logs)

    assert find_markers_in_files(home, MARKERS) == {}


def test_the_scans_find_a_planted_marker(tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Positive controls: the same scans do report a marker when one is really there."""
    home = tmp_path / "dagster_home"
    (home / "storage" / "some_run").mkdir(parents=True)
    (home / "storage" / "some_run" / "compute.err").write_bytes(f"x {IPV6_SENT[3].lower()} y".encode())
    with contextlib.closing(sqlite3.connect(home / "runs.db")) as db, db:
        db.execute("CREATE TABLE event_logs (event text)")
        db.execute("INSERT INTO event_logs VALUES (?)", (json.dumps({"message": f"device {VALID_DEVICES[5]}"}),))
    assert find_markers_in_files(home, MARKERS) == {
        IPV6_SENT[3]: ["storage/some_run/compute.err"],
        VALID_DEVICES[5]: ["runs.db"],
    }

    execute(database_url, "CREATE TABLE planted (note text)")
    execute(database_url, "INSERT INTO planted VALUES (%s)", (f"contact {EMAIL}",))
    execute(database_url, "CREATE VIEW planted_view AS SELECT upper(note) AS note FROM planted")
    dump = dump_public_schema(database_url)
    assert find_markers_in_text(dump["planted"], MARKERS) == [EMAIL]
    assert find_markers_in_text(dump["planted_view"], MARKERS) == [EMAIL], "the search ignores case"
    assert fetch_all(database_url, "SELECT count(*) FROM planted")[0][0] == 1

    caplog.set_level(logging.DEBUG, logger="fetch_etl")
    logging.getLogger("fetch_etl.anything").debug("saw %s", REJECT_IPS[0])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert find_markers_in_text(logged, MARKERS) == [REJECT_IPS[0]]
