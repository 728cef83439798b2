"""Settings come from the run's environment when it starts, and temporary AWS credentials reach the wire.

A recording proxy in front of moto keeps the headers of every request, so the tests see what boto3 really
sent (the session token travels as `X-Amz-Security-Token`), through `dagster asset materialize`, the
definitions imported before the environment was set, and `fetch-etl status`.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fetch_etl.defs.resources import SQS_ENV, sqs_from_env
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.ops.status import gather
from fetch_etl_tests.helpers import TEST_KEY_HEX, clean_env, fetch_all, pipeline_env, queue_counts, send

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken"


class RecordingProxy:
    """Forwards every request to moto unchanged and keeps (action, session token header) of each."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.seen: list[tuple[str, str | None]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = self.headers.get("X-Amz-Target") or body.decode(errors="replace").split("&", 1)[0]
                proxy.seen.append((action, self.headers.get("X-Amz-Security-Token")))
                upstream_conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream_conn.request("POST", self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream_conn.close()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the kernel picks, we read it
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy(sqs_endpoint: str) -> Iterator[RecordingProxy]:
    with RecordingProxy(sqs_endpoint) as recording:
        yield recording


def _materialize(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"]
    return subprocess.run(
        command, env={**env, "DAGSTER_HOME": str(home)}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180
    )


def test_a_session_token_is_sent_on_every_request_of_a_run(
    proxy: RecordingProxy, sqs_client: Any, queue_urls: QueueUrls, database_url: str, tmp_path: Path
) -> None:
    """STS/SSO credentials: before, the key id and secret were passed explicitly and the token dropped."""
    ids = send(sqs_client, queue_urls.queue_url, generate_bodies(15, seed=141, malformed_rate=0))
    env = pipeline_env(proxy.endpoint, queue_urls, database_url, PII_MASKING_KEY=TEST_KEY_HEX, AWS_SESSION_TOKEN=TOKEN)

    run = _materialize(env, tmp_path)

    assert run.returncode == 0, run.stderr[-3000:]
    assert len(fetch_all(database_url, "SELECT message_id FROM user_logins")) == len(ids)
    assert len(proxy.seen) >= 3, proxy.seen
    assert [action for action, token in proxy.seen if token != TOKEN] == [], "every request carries the token"


def test_status_sends_the_session_token_too(
    proxy: RecordingProxy, queue_urls: QueueUrls, database_url: str, aws_env: dict[str, str]
) -> None:
    environ = {
        **aws_env,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_SESSION_TOKEN": TOKEN,
        "SQS_QUEUE_URL": queue_urls.queue_url,
        "SQS_DLQ_URL": queue_urls.dlq_url,
        "DATABASE_URL": database_url,
    }

    report = gather(environ)

    assert report.queue.error is None and report.dlq.error is None
    # queue depth, DLQ depth, the queue's retention and redrive policy: every one carries the token
    assert len(proxy.seen) == 3 and all(token == TOKEN for _, token in proxy.seen), proxy.seen


def test_a_profile_alone_is_enough(
    proxy: RecordingProxy, queue_urls: QueueUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_PROFILE (here with temporary keys in the shared credentials file): nothing explicit, boto3 finds it."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[temp]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = secret\naws_session_token = {TOKEN}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    sqs = sqs_from_env(
        {"AWS_PROFILE": "temp", "AWS_ENDPOINT_URL": proxy.endpoint, "SQS_QUEUE_URL": queue_urls.queue_url}
    )

    assert sqs.depth().visible == 0
    assert proxy.seen and all(token == TOKEN for _, token in proxy.seen)


def test_a_variable_set_after_the_definitions_are_imported_is_used_by_the_run(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """As with the ECS/K8s launchers: the run's own environment wins, not the one at import time."""
    ids = send(sqs_client, queue_urls.queue_url, generate_bodies(12, seed=142, malformed_rate=0))
    later = pipeline_env(
        sqs_endpoint, queue_urls, database_url, PII_MASKING_KEY=TEST_KEY_HEX, SQS_MAX_MESSAGES_PER_RUN="5"
    )
    script = textwrap.dedent(
        f"""
        import os
        from dagster import DagsterInstance
        import fetch_etl.definitions as definitions

        job = definitions.defs().resolve_job_def("ingest_logins")
        os.environ.update({later!r})
        result = job.execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
        raise SystemExit(0 if result.success else 1)
        """
    )

    run = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180
    )

    assert run.returncode == 0, run.stderr[-3000:]
    loaded = {row[0] for row in fetch_all(database_url, "SELECT message_id FROM user_logins")}
    assert len(loaded) == 5 and loaded <= set(ids), "SQS_MAX_MESSAGES_PER_RUN, set after the import, was used"
    assert queue_counts(sqs_client, queue_urls.queue_url) == (7, 0)


def test_every_setting_maps_to_a_field_and_unset_ones_keep_the_field_default() -> None:
    sqs = sqs_from_env({"SQS_QUEUE_URL": "http://q", "SQS_VISIBILITY_TIMEOUT": "42", "AWS_SESSION_TOKEN": ""})
    assert set(SQS_ENV) <= set(type(sqs).model_fields)
    assert (sqs.queue_url, sqs.visibility_timeout, sqs.aws_session_token) == ("http://q", 42, None)
    assert sqs.max_bytes_per_run == 256 * 1024 * 1024
