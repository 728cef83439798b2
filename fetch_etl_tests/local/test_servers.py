"""The local stand-ins are real servers: check they bind loopback only, and really stop by PID."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from uuid import uuid4

import boto3
import psutil
import psycopg
import pytest

from fetch_etl.local.servers import (
    EmbeddedPostgres,
    LocalStackError,
    MotoSqsServer,
    create_database,
    drop_database,
)
from fetch_etl.local.stack import LocalStack, QueueUrls, ensure_dev_masking_key, make_sqs_client


def _gone(pid: int) -> bool:
    """True once the PID no longer runs (signal 0 fails), i.e. the server was really stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_embedded_postgres_binds_loopback_and_stops_by_pid(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    pid = server.pid
    assert pid is not None
    try:
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            version = conn.execute("SELECT version()").fetchone()
            assert version is not None and version[0].startswith("PostgreSQL 18")
            conn.execute("CREATE TABLE kept (id int)")
    finally:
        server.stop()
    assert _gone(pid)
    server.stop()  # idempotent

    with EmbeddedPostgres(tmp_path / "pg") as again:  # same data dir: no initdb, data still there
        assert again.pid != pid
        with psycopg.connect(again.url) as conn:
            assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
        second_pid = again.pid
    assert second_pid is not None and _gone(second_pid)


def test_embedded_postgres_replaces_server_left_by_crashed_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    crashed = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from fetch_etl.local.servers import EmbeddedPostgres
        server = EmbeddedPostgres(Path({str(data_dir)!r}))
        server.start()
        print(server.pid, flush=True)
        os._exit(0)  # no stop(): the postmaster keeps running, as after a crash
    """)
    out = subprocess.run([sys.executable, "-c", crashed], capture_output=True, text=True, check=True, timeout=60)
    stale_pid = int(out.stdout.strip())
    try:
        assert psutil.pid_exists(stale_pid)
        with EmbeddedPostgres(data_dir) as server:
            assert server.pid != stale_pid
            assert not psutil.pid_exists(stale_pid) or psutil.Process(stale_pid).status() == "zombie"
            with psycopg.connect(server.url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        if psutil.pid_exists(stale_pid) and str(data_dir) in " ".join(psutil.Process(stale_pid).cmdline()):
            psutil.Process(stale_pid).kill()


def test_embedded_postgres_start_failure_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedPostgres(tmp_path / "pg", port=busy.getsockname()[1])
        with pytest.raises(LocalStackError, match=r"postgres\.log"):
            server.start()
    assert server.pid is None


def test_create_and_drop_database_even_with_open_connection(postgres_server_url: str) -> None:
    name = f"t_helpers_check_{uuid4().hex[:12]}"  # unique: TEST_DATABASE_URL may be shared by concurrent runs
    url = create_database(postgres_server_url, name)
    leaked = psycopg.connect(url)
    try:
        assert leaked.execute("SELECT current_database()").fetchone() == (name,)
        drop_database(postgres_server_url, name)
    finally:
        leaked.close()
    with psycopg.connect(postgres_server_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row == (0,)
    with pytest.raises(ValueError):
        create_database(postgres_server_url, "Robert'); DROP TABLE students;--")


def test_database_url_fixture_is_a_fresh_database(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None and name[0].startswith("t_")
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)


def test_moto_server_starts_and_stops_by_pid(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "logs" / "moto.log"
    with MotoSqsServer(log_file=log_file) as server:
        pid = server.pid
        assert pid is not None and server.endpoint.startswith("http://127.0.0.1:")
        client = make_sqs_client(server.endpoint)
        client.create_queue(QueueName="probe")
        assert any(url.endswith("/probe") for url in client.list_queues()["QueueUrls"])
    assert _gone(pid)
    assert "POST / HTTP" in log_file.read_text()  # its request log went to the file...
    assert "HTTP/1.1" not in capfd.readouterr().out  # ...and not to our stdout


def test_queue_fixtures_create_queue_with_redrive_to_dlq(sqs_client: Any, queue_urls: QueueUrls) -> None:
    assert queue_urls.dlq_url == queue_urls.queue_url + "-dlq"
    attrs = sqs_client.get_queue_attributes(QueueUrl=queue_urls.queue_url, AttributeNames=["RedrivePolicy"])
    dlq_arn = sqs_client.get_queue_attributes(QueueUrl=queue_urls.dlq_url, AttributeNames=["QueueArn"])
    policy = json.loads(attrs["Attributes"]["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]


def test_aws_env_points_default_boto3_clients_at_moto(aws_env: dict[str, str], queue_urls: QueueUrls) -> None:
    client = boto3.client("sqs")  # no explicit endpoint/credentials, as production code builds it
    client.send_message(QueueUrl=queue_urls.queue_url, MessageBody="{}")
    messages = client.receive_message(QueueUrl=queue_urls.queue_url, WaitTimeSeconds=0)["Messages"]
    assert [m["Body"] for m in messages] == ["{}"]


def test_dev_masking_key_is_private_random_and_created_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    path, created = ensure_dev_masking_key(tmp_path / "state")
    assert created and path == tmp_path / "state" / "dev_masking.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.endswith("\n") and len(base64.b64decode(text.strip(), validate=True)) == 32
    assert ensure_dev_masking_key(tmp_path / "state") == (path, False)
    assert path.read_text() == text
    captured = capsys.readouterr()
    assert text.strip() not in caplog.text + captured.out + captured.err


def test_local_stack_runs_both_services_and_stops_them(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    stack = LocalStack(state_dir, queue_name="logins").start()
    pids = [stack.postgres.pid, stack.sqs.pid]
    try:
        env = stack.env()
        assert set(env) == {
            "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "SQS_QUEUE_URL", "SQS_DLQ_URL", "DATABASE_URL", "PII_MASKING_KEY_FILE", "DAGSTER_HOME",
            "SQS_DELETE_THREADS",
        }  # fmt: skip
        assert stack.dev_key_created and Path(env["PII_MASKING_KEY_FILE"]).is_absolute()
        assert stack.queue_url.endswith("/logins") and stack.dlq_url.endswith("/logins-dlq")
        client = make_sqs_client(env["AWS_ENDPOINT_URL"])
        for url in (env["SQS_QUEUE_URL"], env["SQS_DLQ_URL"]):
            assert client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        dagster_home = Path(env["DAGSTER_HOME"])
        assert dagster_home.is_absolute() and "enabled: false" in (dagster_home / "dagster.yaml").read_text()
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        recorded = json.loads((state_dir / "pids.json").read_text())
        assert [recorded["postgres"]["pid"], recorded["sqs"]["pid"]] == pids
    finally:
        stack.stop()
    assert all(pid is not None and _gone(pid) for pid in pids)
    assert not (state_dir / "pids.json").exists()
    stack.stop()  # idempotent

    with LocalStack(state_dir) as again:  # restart keeps the key
        assert not again.dev_key_created
