"""Asset checks on user_logins against real Postgres and moto: they run with every ingest, on their own
without the in-memory batch, and fail when the table really is broken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    define_asset_job,
    in_process_executor,
)

from fetch_etl.definitions import defs as project_defs
from fetch_etl.defs.automation import INGEST_JOB_NAME, ingest_logins_job
from fetch_etl.defs.checks import (
    DEFAULT_REJECT_RATE_THRESHOLD,
    NOT_LOADED_YET,
    TOKEN_SHAPES,
    USER_LOGINS_CHECKS,
    accepted_shapes,
    judge_reject_rate,
    reject_rate_threshold,
    shape_mode,
)
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.logins import masking
from fetch_etl_tests.helpers import ASSETS, TEST_KEY_HEX, execute, fetch_all, resources, send, sqs_resource

FOO_BAR = '{"foo": "oops_wrong_msg_type", "bar": "123"}'
CHECK_NAMES = {
    "required_columns_not_null",
    "message_id_unique",
    "tokens_well_formed",
    "reject_rate_below_threshold",
    "dead_letter_queue_depth",
}
CHECKS_ONLY = "user_logins_checks_only"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """One instance across runs, so a checks-only run sees the materialization of the ingest before it."""
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _defs(res: dict[str, Any]) -> Definitions:
    """The project's job and checks, with resources pointed at the test servers."""
    checks_only = define_asset_job(CHECKS_ONLY, selection=AssetSelection.checks_for_assets(AssetKey("user_logins")))
    return Definitions(
        assets=ASSETS,
        asset_checks=USER_LOGINS_CHECKS,
        jobs=[ingest_logins_job, checks_only],
        resources=res,
        executor=in_process_executor,
    )


def _run(res: dict[str, Any], instance: DagsterInstance, job: str = INGEST_JOB_NAME) -> ExecuteInProcessResult:
    return _defs(res).resolve_job_def(job).execute_in_process(instance=instance)


def _evaluations(result: ExecuteInProcessResult) -> dict[str, AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _meta(evaluation: AssetCheckEvaluation) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in evaluation.metadata.items()}


def test_the_ingest_job_and_the_project_definitions_include_every_check() -> None:
    keys = {AssetCheckKey(AssetKey("user_logins"), name) for name in CHECK_NAMES}
    job = project_defs().resolve_job_def(INGEST_JOB_NAME)
    assert keys <= set(job.asset_layer.asset_graph.asset_check_keys)
    assert {check.check_key.name for check in USER_LOGINS_CHECKS} == CHECK_NAMES  # type: ignore[attr-defined]


def test_every_check_runs_with_the_ingest_and_passes_on_a_clean_run(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(39, seed=31, malformed_rate=0), FOO_BAR])

    result = _run(resources(sqs_endpoint, queue_urls, database_url), instance)

    assert result.success
    evaluations = _evaluations(result)
    assert set(evaluations) == CHECK_NAMES
    assert {name: e.passed for name, e in evaluations.items()} == dict.fromkeys(CHECK_NAMES, True)
    assert _meta(evaluations["required_columns_not_null"])["rows_checked"] == 39
    assert _meta(evaluations["tokens_well_formed"])["tokens_by_mode"]["hmac"] == 78
    rate = _meta(evaluations["reject_rate_below_threshold"])
    assert (rate["received"], rate["rejected"], rate["reject_rate"]) == (40, 1, 0.025)
    assert rate["run_id"] == result.run_id
    assert evaluations["reject_rate_below_threshold"].severity == AssetCheckSeverity.WARN
    dlq = _meta(evaluations["dead_letter_queue_depth"])
    assert (dlq["dlq_url"], dlq["dlq_visible"]) == (queue_urls.dlq_url, 1)


def test_checks_run_on_their_own_without_the_in_memory_batch(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(10, seed=32, malformed_rate=0))
    res = resources(sqs_endpoint, queue_urls, database_url)
    ingest = _run(res, instance)
    send(sqs_client, queue_urls.queue_url, generate_bodies(5, seed=33, malformed_rate=0))  # not received alone

    alone = _run(res, instance, CHECKS_ONLY)

    assert alone.success
    assert alone.get_asset_materialization_events() == [], "a checks-only run must not materialize anything"
    evaluations = _evaluations(alone)
    assert set(evaluations) == CHECK_NAMES and all(e.passed for e in evaluations.values())
    assert _meta(evaluations["reject_rate_below_threshold"])["run_id"] == ingest.run_id
    assert fetch_all(database_url, "SELECT count(*) FROM user_logins")[0][0] == 10
    visible = sqs_client.get_queue_attributes(
        QueueUrl=queue_urls.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert visible == "5", "the checks must not receive from the queue"


def test_checks_fail_on_a_broken_table_and_ignore_legacy_rows(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(6, seed=34, malformed_rate=0))
    res = resources(sqs_endpoint, queue_urls, database_url)
    _run(res, instance)
    good_ip, good_device, message_id = fetch_all(
        database_url, "SELECT masked_ip, masked_device_id, message_id FROM user_logins LIMIT 1"
    )[0]
    # Legacy rows of a reference table (no message_id) are out of scope, whatever they hold.
    execute(database_url, "INSERT INTO user_logins (user_id, masked_ip) VALUES (NULL, 'legacy-token')")
    execute(database_url, "DROP INDEX user_logins_message_id_key")
    execute(
        database_url,
        "INSERT INTO user_logins (message_id, user_id, masked_ip, masked_device_id, app_version) VALUES "
        "(%s, 'u1', %s, %s, 1), ('m-null', 'u2', NULL, %s, 1), ('m-upper', 'u3', %s, %s, NULL), "
        "('m-short', 'u4', %s, 'not-a-token', 2)",
        [message_id, good_ip, good_device, good_device, good_ip.upper(), good_device, good_ip[:63]],
    )

    evaluations = _evaluations(_run(res, instance, CHECKS_ONLY))

    nulls = evaluations["required_columns_not_null"]
    assert not nulls.passed
    assert _meta(nulls)["null_counts"] == {"masked_ip": 1, "masked_device_id": 0, "user_id": 0, "app_version": 1}
    assert nulls.description is not None and "masked_ip (1)" in nulls.description
    dupes = evaluations["message_id_unique"]
    assert not dupes.passed
    assert _meta(dupes)["examples"] == [message_id]
    assert _meta(dupes)["unique_index_present"] is False
    tokens = evaluations["tokens_well_formed"]
    assert not tokens.passed
    assert _meta(tokens)["malformed_tokens"] == {"masked_ip": 2, "masked_device_id": 1}
    assert _meta(tokens)["example_message_ids"] == ["m-short", "m-upper"]
    assert evaluations["reject_rate_below_threshold"].passed


def test_in_an_ingest_run_the_table_checks_read_only_that_runs_rows(
    instance: DagsterInstance, sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    """Per-run check cost follows the batch: an ingest's checks read its own load; alone they read everything."""
    res = resources(sqs_endpoint, queue_urls, database_url)
    send(sqs_client, queue_urls.queue_url, generate_bodies(12, seed=35, malformed_rate=0))
    _run(res, instance)
    execute(
        database_url,
        "UPDATE user_logins SET masked_ip = 'not-a-token' WHERE message_id = (SELECT min(message_id) FROM user_logins)",
    )  # an old row goes bad after its load was checked
    send(sqs_client, queue_urls.queue_url, generate_bodies(7, seed=36, malformed_rate=0))

    second = _evaluations(_run(res, instance))
    alone = _evaluations(_run(res, instance, CHECKS_ONLY))

    loaded_at = fetch_all(database_url, "SELECT max(loaded_at) FROM user_logins")[0][0]
    assert _meta(second["required_columns_not_null"])["rows_checked"] == 7
    assert _meta(second["tokens_well_formed"])["tokens_by_mode"]["hmac"] == 14
    assert all(second[name].passed for name in ("required_columns_not_null", "tokens_well_formed", "message_id_unique"))
    assert (
        _meta(second["tokens_well_formed"])["scope"] == f"rows of this run's load (loaded_at = {loaded_at.isoformat()})"
    )
    assert _meta(alone["required_columns_not_null"])["rows_checked"] == 19
    assert _meta(alone["tokens_well_formed"])["scope"] == "whole table (rows loaded by fetch-etl)"
    assert not alone["tokens_well_formed"].passed
    assert _meta(alone["tokens_well_formed"])["malformed_tokens"] == {"masked_ip": 1, "masked_device_id": 0}


def test_reject_rate_warns_above_the_threshold_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    instance: DagsterInstance,
    sqs_endpoint: str,
    sqs_client: Any,
    queue_urls: QueueUrls,
    database_url: str,
) -> None:
    send(sqs_client, queue_urls.queue_url, [*generate_bodies(8, seed=35, malformed_rate=0), FOO_BAR, "not json"])
    res = resources(sqs_endpoint, queue_urls, database_url)
    monkeypatch.delenv("REJECT_RATE_WARN_THRESHOLD", raising=False)

    warned = _evaluations(_run(res, instance))["reject_rate_below_threshold"]

    assert not warned.passed
    assert warned.severity == AssetCheckSeverity.WARN
    assert warned.description == "2 of 10 messages rejected (20.0%), above the threshold of 5.0%"
    monkeypatch.setenv("REJECT_RATE_WARN_THRESHOLD", "0.25")
    relaxed = _evaluations(_run(res, instance, CHECKS_ONLY))["reject_rate_below_threshold"]
    assert relaxed.passed and _meta(relaxed)["threshold"] == 0.25


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreadable_dead_letter_queue_warns(
    instance: DagsterInstance, sqs_endpoint: str, queue_urls: QueueUrls, database_url: str
) -> None:
    port = _closed_port()
    unreachable = QueueUrls(f"http://127.0.0.1:{port}/000000000000/q", f"http://127.0.0.1:{port}/000000000000/q-dlq")
    sqs = sqs_resource(f"http://127.0.0.1:{port}", unreachable, max_attempts=1)
    res = resources(sqs_endpoint, queue_urls, database_url, sqs=sqs)

    dlq = _evaluations(_run(res, instance, CHECKS_ONLY))["dead_letter_queue_depth"]

    assert not dlq.passed and dlq.severity == AssetCheckSeverity.WARN
    assert dlq.description is not None and f"127.0.0.1:{port}" in dlq.description


def test_checks_on_a_database_never_loaded_say_what_to_do(
    instance: DagsterInstance, sqs_endpoint: str, queue_urls: QueueUrls, database_url: str
) -> None:
    evaluations = _evaluations(_run(resources(sqs_endpoint, queue_urls, database_url), instance, CHECKS_ONLY))

    for name in ("required_columns_not_null", "message_id_unique", "tokens_well_formed"):
        assert not evaluations[name].passed and evaluations[name].description == NOT_LOADED_YET
    assert evaluations["reject_rate_below_threshold"].description == "user_logins has no materialization yet"
    assert evaluations["dead_letter_queue_depth"].passed


# --- the pure rules -------------------------------------------------------------------------------


def test_every_masking_mode_has_a_token_shape() -> None:
    assert set(masking.MASKING_MODES) <= set(TOKEN_SHAPES), "give the new mode's masker a shape"
    assert set(accepted_shapes()) == set(masking.MASKING_MODES)


def test_tokens_of_each_mode_have_its_shape_and_nothing_else_does() -> None:
    key = bytes.fromhex(TEST_KEY_HEX)
    for mode in masking.MASKING_MODES:
        masker = masking.build_masker(mode, key)
        tokens = [*masking.mask_ips(masker, ["199.172.111.135", "2001:db8::1"]).tokens]
        tokens += masking.mask_device_ids(masker, ["593-47-5928"])
        assert [shape_mode(token) for token in tokens] == [mode] * 3
    hmac_token = "ab" * 32
    for wrong in ("", hmac_token.upper(), hmac_token[:-1], hmac_token + "0", f"{hmac_token}\n", "s1.", "s1.abc", "x"):
        assert shape_mode(wrong) is None, wrong
    assert shape_mode("s1.AAAAAAAAAAAAAAAAAAAAAA", {"siv": TOKEN_SHAPES["siv"]}) == "siv"
    assert shape_mode("s1.AAAAAAAAAAAAAAAAAAAA+/", {"siv": TOKEN_SHAPES["siv"]}) is None, "not URL-safe base64"


def test_python_and_postgres_read_the_shapes_alike(database_url: str) -> None:
    samples = ["ab" * 32, "AB" * 32, "ab" * 31, "s1." + "A" * 22, "s1." + "A" * 21, "s1.AAAA/AAAAAAAAAAAAAAAAAA", "x"]
    for mode, shape in TOKEN_SHAPES.items():
        in_postgres = [
            r[0]
            for r in fetch_all(
                database_url,
                "SELECT char_length(t) BETWEEN %s AND %s AND t ~ %s FROM unnest(%s::text[]) t",
                [shape.shortest, shape.longest, shape.pattern, samples],
            )
        ]
        assert in_postgres == [shape.matches(s) for s in samples], mode


def test_reject_rate_rules() -> None:
    assert reject_rate_threshold({}) == DEFAULT_REJECT_RATE_THRESHOLD == 0.05
    assert reject_rate_threshold({"REJECT_RATE_WARN_THRESHOLD": " 0.2 "}) == 0.2
    for bad in ("5%", "1.5", "-0.1", "nan"):
        with pytest.raises(ValueError, match="REJECT_RATE_WARN_THRESHOLD"):
            reject_rate_threshold({"REJECT_RATE_WARN_THRESHOLD": bad})
    assert judge_reject_rate(0, 0, 0.05) == (True, 0.0, "the last run received no messages")
    assert judge_reject_rate(100, 5, 0.05)[:2] == (True, 0.05)
    assert judge_reject_rate(100, 6, 0.05)[:2] == (False, 0.06)
