"""The project is a `dg` project: `dg check defs` passes and `dg list defs` shows what Dagster loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DG = Path(sys.executable).with_name("dg")


def dg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DG), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_dg_check_defs_passes() -> None:
    run = dg("check", "defs")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "All definitions loaded successfully." in run.stdout


def test_dg_list_defs_shows_the_assets_checks_jobs_and_sensor() -> None:
    run = dg("list", "defs", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    listed = json.loads(run.stdout)
    assert sorted(a["asset_key"] for a in listed["assets"]) == ["masked_logins", "raw_login_messages", "user_logins"]
    assert sorted(c["key"] for c in listed["asset_checks"]) == [
        "user_logins:dead_letter_queue_depth",
        "user_logins:message_id_unique",
        "user_logins:reject_rate_below_threshold",
        "user_logins:required_columns_not_null",
        "user_logins:tokens_well_formed",
    ]
    assert sorted(j["name"] for j in listed["jobs"]) == ["ingest_logins", "redrive_dead_letters"]
    assert [s["name"] for s in listed["sensors"]] == ["login_queue_sensor"]
    assert sorted(r["name"] for r in listed["resources"]) == ["batch_io_manager", "pii_masking", "postgres", "sqs"]
