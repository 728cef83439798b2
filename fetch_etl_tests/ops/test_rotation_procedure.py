"""docs/pii.md's "Rotating a `siv` key" procedure, step by step, running its commands as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.masking import SivMasker
from fetch_etl_tests.helpers import (
    FOO_BAR,
    clean_env,
    fetch_all,
    login_body,
    queue_counts,
    resources,
    run_pipeline,
    send,
)

PII_DOC = Path(__file__).resolve().parents[2] / "docs" / "pii.md"
BIN = Path(sys.executable).parent
OLD_KEY_HEX = bytes(range(32)).hex()


def readme_commands() -> list[str]:
    """The shell blocks of the rotation section of docs/pii.md, in order."""
    text = PII_DOC.read_text(encoding="utf-8")
    section = text.split("## Rotating a `siv` key\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def _shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """One documented command in a shell, with this project's `python` and `fetch-etl` first on the PATH."""
    environment = clean_env(**env)
    environment["PATH"] = f"{BIN}:{environment.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def _run(sqs_endpoint: str, queue_urls: QueueUrls, database_url: str, key_hex: str) -> Any:
    return run_pipeline(
        resources(sqs_endpoint, queue_urls, database_url, key=key_hex, mode="siv"), raise_on_error=False
    )


def _failure(result: Any) -> str:
    return str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)


def test_the_documented_rotation_procedure_works_as_written(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    create_key, rotate = readme_commands()  # exactly two commands; the other steps are deployments
    assert "rotate-key --old-key-file old.key --new-key-file new.key" in rotate
    (tmp_path / "old.key").write_text(OLD_KEY_HEX + "\n")
    originals = {f"10.1.0.{i}": f"dev-{i}" for i in range(5)}
    bodies = [login_body(user_id=f"u{i}", ip=ip, device_id=dev) for i, (ip, dev) in enumerate(originals.items())]
    send(sqs_client, queue_urls.queue_url, [*bodies, FOO_BAR])
    assert _run(sqs_endpoint, queue_urls, database_url, OLD_KEY_HEX).success  # the pipeline runs on the old key

    # Step 1: the new key beside the old one; the pipeline keeps the old key.
    made = _shell(create_key, tmp_path)
    assert made.returncode == 0, made.stderr
    new_hex = (tmp_path / "new.key").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", new_hex)
    old, new = SivMasker(bytes.fromhex(OLD_KEY_HEX)), SivMasker(bytes.fromhex(new_hex))
    send(sqs_client, queue_urls.queue_url, [login_body(user_id="later", ip="10.1.0.9", device_id="dev-9")])
    originals["10.1.0.9"] = "dev-9"
    too_early = _run(sqs_endpoint, queue_urls, database_url, new_hex)  # why the new key is not deployed first
    assert not too_early.success and "not the one the stored tokens were made with" in _failure(too_early)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (1, 0)
    assert _run(sqs_endpoint, queue_urls, database_url, OLD_KEY_HEX).success

    # Step 2: re-key what is stored.
    rotated = _shell(rotate, tmp_path, DATABASE_URL=database_url)
    assert rotated.returncode == 0, rotated.stderr + rotated.stdout
    assert f"from key {old.key_id} to key {new.key_id}" in rotated.stderr
    assert "6 rows in" in rotated.stdout  # the 6 logins (the reject is not a login: it holds no tokens)

    # Step 3: until the new key is deployed, runs on the old one stop before receiving anything.
    send(sqs_client, queue_urls.queue_url, [login_body(user_id="after", ip="10.1.0.10", device_id="dev-10")])
    originals["10.1.0.10"] = "dev-10"
    stale = _run(sqs_endpoint, queue_urls, database_url, OLD_KEY_HEX)
    assert not stale.success
    assert old.key_id in _failure(stale) and new.key_id in _failure(stale)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (1, 0)
    assert _run(sqs_endpoint, queue_urls, database_url, new_hex).success
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)

    rows = fetch_all(database_url, "SELECT masked_ip, masked_device_id, mask_key_id FROM user_logins")
    assert {row[2] for row in rows} == {new.key_id} and len(rows) == len(originals)
    assert {new.reveal(ip, "ip"): new.reveal(dev, "device_id") for ip, dev, _ in rows} == originals
    active = fetch_all(database_url, "SELECT key_id FROM fetch_etl_mask_keys WHERE retired_at IS NULL")
    assert active == [(new.key_id,)]
