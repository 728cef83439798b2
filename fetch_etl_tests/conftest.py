"""Shared fixtures: real PostgreSQL and a real SQS API (moto server), started locally without Docker.

Set TEST_DATABASE_URL to a server URL where we may CREATE DATABASE to use an existing PostgreSQL instead
of the embedded one; every test still gets its own throwaway database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from fetch_etl.local.servers import EmbeddedPostgres, MotoSqsServer, create_database, drop_database
from fetch_etl.local.stack import AWS_REGION, QueueUrls, create_queue_pair, make_sqs_client
from fetch_etl_tests.legacy_sqs import LegacySqsDouble
from fetch_etl_tests.localstack_legacy import BUILD_COMMAND, ENV_VAR, LegacyLocalStack, configured_binary, query_client


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Server URL for CREATE DATABASE: TEST_DATABASE_URL if set, else a session-wide embedded PG 18."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's tmp tree: pytest re-tightens /tmp/pytest-of-<user> to 0700 whenever another
    # session starts, and the server runs as its own system user that must traverse to its data.
    data_dir = Path(tempfile.mkdtemp(prefix="fetch-etl-test-pg-"))
    try:
        with EmbeddedPostgres(data_dir) as server:
            yield server.url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh empty database per test, dropped afterwards (even if the test leaked connections)."""
    name = f"t_{uuid4().hex[:12]}"
    url = create_database(postgres_server_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def sqs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint of a session-wide moto server; its request log goes to a tmp file, not test output."""
    with MotoSqsServer(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server.endpoint


@pytest.fixture
def sqs_client(sqs_endpoint: str) -> Any:
    """boto3 SQS client bound to the moto server with dummy credentials."""
    return make_sqs_client(sqs_endpoint)


@pytest.fixture
def queue_urls(sqs_client: Any) -> Iterator[QueueUrls]:
    """A unique queue `q-<hex>` and its DLQ `q-<hex>-dlq` (redrive after 5 receives), deleted afterwards."""
    urls = create_queue_pair(sqs_client, f"q-{uuid4().hex[:12]}")
    yield urls
    for url in urls:
        sqs_client.delete_queue(QueueUrl=url)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, sqs_endpoint: str) -> dict[str, str]:
    """Point code that builds its own boto3 clients from the environment at moto, never at real AWS."""
    env = {
        "AWS_ENDPOINT_URL": sqs_endpoint,
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Each of these would override or taint the settings above.
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture
def legacy_sqs(sqs_endpoint: str) -> Iterator[LegacySqsDouble]:
    """The old-LocalStack double (HTTP 500 to JSON, query proxied to moto); a new port per test."""
    with LegacySqsDouble(sqs_endpoint) as double:
        yield double


@pytest.fixture(scope="session")
def localstack_legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LegacyLocalStack]:
    """The reference image's LocalStack 1.0.4 in host mode on 127.0.0.1; in CI a missing build fails, else skips."""
    binary = configured_binary()
    if binary is None:
        reason = f"LocalStack 1.0.4 is not built: run `{BUILD_COMMAND}` (or export {ENV_VAR}=<its bin/localstack>)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run builds it and exports {ENV_VAR}")
        pytest.skip(reason)
    with LegacyLocalStack(binary, tmp_path_factory.mktemp("localstack-1.0.4")) as server:
        yield server


@pytest.fixture
def legacy_queue_urls(localstack_legacy: LegacyLocalStack) -> Iterator[QueueUrls]:
    """A unique queue pair on LocalStack 1.0.4 (made over query, all it speaks), deleted afterwards."""
    client = query_client(localstack_legacy.endpoint)
    urls = create_queue_pair(client, f"q-{uuid4().hex[:12]}")
    yield urls
    for url in urls:
        client.delete_queue(QueueUrl=url)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which PostgreSQL the database fixtures use, since that changes what a failure means."""
    target = "TEST_DATABASE_URL" if os.environ.get("TEST_DATABASE_URL") else "embedded PostgreSQL 18"
    return f"fetch-etl database fixtures: {target}"
