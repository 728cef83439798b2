"""A run as a role holding only the grants docs/deployment.md lists, after `fetch-etl migrate` by the owner."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, Definitions, in_process_executor
from psycopg import sql

from fetch_etl.cli import main
from fetch_etl.defs.automation import INGEST_JOB_NAME, ingest_logins_job
from fetch_etl.defs.checks import USER_LOGINS_CHECKS
from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins.frame import loadable, mask_messages, rejected
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.warehouse import probes
from fetch_etl.warehouse.load import load_run
from fetch_etl.warehouse.resource import PostgresResource
from fetch_etl.warehouse.schema import USER_LOGINS_DDL
from fetch_etl_tests.helpers import (
    ASSETS,
    FOO_BAR,
    NOT_JSON,
    TEST_KEY_HEX,
    NoDeleteSqs,
    clean_env,
    execute,
    fetch_all,
    login_body,
    queue_counts,
    resources,
    send,
    sqs_resource,
    wait_until_none_in_flight,
)

DEPLOYMENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def documented_grants() -> list[str]:
    """The GRANT statements of docs/deployment.md, as written there."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- grants:begin.*?```sql\n(.*?)```\s*<!-- grants:end -->", text, re.S)
    assert block, "docs/deployment.md lost its grants block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture
def run_role(database_url: str) -> Iterator[tuple[str, str]]:
    """(role name, URL connecting as it): a login role with no privileges of its own; dropped afterwards."""
    role, password = f"fetch_etl_run_{secrets.token_hex(4)}", secrets.token_hex(12)
    execute(
        database_url,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(  # type: ignore[arg-type]
            sql.Identifier(role), sql.Literal(password)
        ),
    )
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    try:
        yield role, urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _grant(database_url: str, role: str, statements: list[str]) -> None:
    database = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.replace("fetch_etl_run", role).replace("DATABASE warehouse", f"DATABASE {database}"))


def _ingest(res: dict[str, Any]) -> Any:
    """The project's ingest job with its asset checks, resources pointed at the test servers."""
    defs = Definitions(
        assets=ASSETS,
        asset_checks=USER_LOGINS_CHECKS,
        jobs=[ingest_logins_job],
        resources=res,
        executor=in_process_executor,
    )
    with DagsterInstance.ephemeral() as instance:
        return defs.resolve_job_def(INGEST_JOB_NAME).execute_in_process(instance=instance, raise_on_error=False)


def _loaded(result: Any) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node("user_logins")
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def _migrate_command(url: str) -> Any:
    return CliRunner().invoke(main, ["migrate"], env=clean_env(DATABASE_URL=url), catch_exceptions=False)


def test_a_least_privilege_role_runs_after_the_owner_migrates(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, run_role: tuple[str, str]
) -> None:
    role, role_url = run_role
    owner = _migrate_command(database_url)
    assert owner.exit_code == 0, owner.output
    assert "changed: create table user_logins\n" in owner.output and "the schema is up to date" in owner.output
    assert "nothing to change" in _migrate_command(database_url).output
    _grant(database_url, role, documented_grants())

    send(sqs_client, queue_urls.queue_url, [login_body(), login_body(user_id="b"), FOO_BAR])
    crashing = NoDeleteSqs(**sqs_resource(sqs_endpoint, queue_urls, visibility_timeout=1).model_dump())
    first = _ingest(resources(sqs_endpoint, queue_urls, role_url, sqs=crashing))
    assert first.success
    assert (_loaded(first)["load_path"], _loaded(first)["loaded"], _loaded(first)["dead_lettered"]) == ("copy", 2, 1)

    wait_until_none_in_flight(sqs_client, queue_urls.queue_url)
    send(sqs_client, queue_urls.queue_url, [NOT_JSON, login_body(user_id="c")])
    second = _ingest(resources(sqs_endpoint, queue_urls, role_url))
    assert second.success
    meta = _loaded(second)
    assert (meta["already_stored"], meta["loaded"], meta["dead_lettered"], meta["deleted_from_queue"]) == (3, 1, 1, 5)
    assert queue_counts(sqs_client, queue_urls.queue_url) == (0, 0)
    checks = {e.check_name: e.passed for e in second.get_asset_check_evaluations()}
    assert len(checks) == len(USER_LOGINS_CHECKS), "every check ran to a result, none errored on a privilege"
    assert {name for name, ok in checks.items() if not ok} == {"reject_rate_below_threshold"}, "2 of 5 rejected"

    with PostgresResource(database_url=role_url).connect() as conn:  # what `fetch-etl status` reads
        overview = probes.warehouse_overview(conn)
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert (
        overview.exists and overview.rows == 3 and overview.rejects_by_reason == {"not_a_login": 1, "invalid_json": 1}
    )
    as_role = _migrate_command(role_url)
    assert as_role.exit_code == 0 and "nothing to change" in as_role.output, as_role.output
    # The merge path (a concurrent run stored one of the batch's MessageIds first) needs TEMP: as the role.
    ((stored_id,),) = fetch_all(database_url, "SELECT message_id FROM user_logins WHERE user_id = 'c'")
    messages = [QueueMessage(stored_id, "h", login_body(user_id="c"), "1700000000000", 1)]
    messages.append(QueueMessage("new-one", "h", login_body(user_id="d"), "1700000000000", 1))
    frame = mask_messages(messages, HmacMasker(bytes.fromhex(TEST_KEY_HEX)))
    with PostgresResource(database_url=role_url).connect() as conn:
        merged = load_run(conn, loadable(frame), rejected(frame))
    assert (merged.path, merged.inserted, merged.already_present) == ("merge", 1, 1)


def test_a_least_privilege_role_on_an_unmigrated_schema_is_told_to_run_migrate(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str, run_role: tuple[str, str]
) -> None:
    role, role_url = run_role
    execute(database_url, USER_LOGINS_DDL)  # the reference table only, as the reference image creates it
    _grant(database_url, role, [g for g in documented_grants() if "user_logins_" not in g and "mask_keys" not in g])
    send(sqs_client, queue_urls.queue_url, [login_body(), FOO_BAR])

    result = _ingest(resources(sqs_endpoint, queue_urls, role_url))

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert f"role {role!r} may not add them" in message
    assert "run `fetch-etl migrate` once as the owner of the tables" in message
    assert queue_counts(sqs_client, queue_urls.queue_url) == (2, 0), "nothing was received"

    command = _migrate_command(role_url)
    assert command.exit_code == 1
    assert "add column user_logins.message_id text" in command.output and "fetch-etl migrate" in command.output
    with psycopg.connect(database_url) as conn:
        assert "message_id" not in dict(probes.table_columns(conn)), "the failed migration changed nothing"
