"""The metadata the UI shows for user_logins: schema, column lineage, newest rows, rejects, throughput."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from dagster import AssetKey, TableColumnLineage, TableSchema

from fetch_etl.definitions import defs
from fetch_etl.defs.metadata import (
    TOKEN_PREVIEW_CHARS,
    rows_preview,
    user_logins_lineage,
)
from fetch_etl.local.stack import QueueUrls
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse.load import LOGIN_COLUMNS, migrate
from fetch_etl.warehouse.probes import table_columns
from fetch_etl_tests.helpers import fetch_all, login_body, metadata, resources, run_pipeline, send

FOO_BAR = '{"foo": "oops_wrong_msg_type", "bar": "123"}'
CLEAR_IP = "198.51.100.77"
CLEAR_DEVICE = "555-12-3456"


def test_user_logins_reports_schema_lineage_preview_rejects_and_throughput(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    bodies = [login_body(ip=CLEAR_IP, device_id=CLEAR_DEVICE), *generate_bodies(9, seed=41, malformed_rate=0)]
    send(sqs_client, queue_urls.queue_url, [*bodies, FOO_BAR, "nope"])

    meta = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)))

    live = fetch_all(
        database_url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'user_logins' ORDER BY ordinal_position",
    )
    schema = meta["dagster/column_schema"]
    assert isinstance(schema, TableSchema)
    assert [c.name for c in schema.columns] == [r[0] for r in live]
    assert {c.name: c.type for c in schema.columns}["app_version"] == "integer"
    assert all(c.description for c in schema.columns)

    lineage = meta["dagster/column_lineage"]
    assert isinstance(lineage, TableColumnLineage)
    assert set(lineage.deps_by_column) == set(LOGIN_COLUMNS), "every loaded column but loaded_at"
    assert {(d.asset_key, d.column_name) for d in lineage.deps_by_column["masked_ip"]} == {
        (AssetKey("masked_logins"), "masked_ip")
    }

    preview = meta["newest_rows"]
    assert preview.count("\n") == 6, "header, separator and the 5 newest rows"
    full_tokens = {r[0] for r in fetch_all(database_url, "SELECT masked_ip FROM user_logins")}
    assert all(token not in preview for token in full_tokens), "tokens are shortened"
    assert any(f"{token[:TOKEN_PREVIEW_CHARS]}…" in preview for token in full_tokens)
    assert CLEAR_IP not in str(meta) and CLEAR_DEVICE not in str(meta)

    assert meta["rejected_by_reason"] == {"not_a_login": 1, "invalid_json": 1}
    assert meta["rejected_total_by_reason"] == {"invalid_json": 1, "not_a_login": 1}
    assert meta["run_elapsed_seconds"] > 0
    assert meta["run_messages_per_second"] == pytest.approx(12 / meta["run_elapsed_seconds"], rel=0.01, abs=0.1)


def test_masked_logins_reports_its_frame_schema(
    sqs_endpoint: str, sqs_client: Any, queue_urls: QueueUrls, database_url: str
) -> None:
    send(sqs_client, queue_urls.queue_url, generate_bodies(3, seed=42, malformed_rate=0))
    schema = metadata(run_pipeline(resources(sqs_endpoint, queue_urls, database_url)), "masked_logins")[
        "dagster/column_schema"
    ]
    names = [c.name for c in schema.columns]
    assert names[: len(LOGIN_COLUMNS)] == list(LOGIN_COLUMNS)
    assert {"status", "reason_code", "reason", "received_at"} <= set(names)
    assert all(c.description for c in schema.columns)


def test_the_declared_schema_matches_the_migrated_table(database_url: str) -> None:
    """Catches a column added to the migration without a description here (or the other way round)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        live = table_columns(conn)
    asset = defs().resolve_assets_def("user_logins")
    declared = asset.metadata_by_key[AssetKey("user_logins")]["dagster/column_schema"]
    assert [(c.name, c.type) for c in declared.columns] == live


def test_every_asset_reads_on_its_own_in_the_graph() -> None:
    kinds = {"raw_login_messages": {"sqs"}, "masked_logins": {"pandas"}, "user_logins": {"postgres"}}
    for name, expected_kinds in kinds.items():
        spec = next(iter(defs().resolve_assets_def(name).specs))
        assert spec.group_name == "logins"
        assert spec.owners == ["team:data-engineering"]
        assert spec.kinds == expected_kinds
        assert spec.description and len(spec.description) > 80
        assert not re.search(r"https?://", spec.description), "descriptions are link-free"


def test_rows_preview_shortens_tokens_and_shows_only_what_it_is_given() -> None:
    token = "f" * 64
    preview = rows_preview([{"user_id": "u1", "masked_ip": token, "masked_device_id": "s1.short", "ip": CLEAR_IP}])
    assert f"{'f' * TOKEN_PREVIEW_CHARS}…" in preview and token not in preview
    assert "s1.short" in preview
    assert CLEAR_IP not in preview, "only the preview columns, never a clear value"
    assert rows_preview([]) == "_no rows loaded yet_"
    assert user_logins_lineage(["loaded_at", "user_id"]).deps_by_column.keys() == {"user_id"}
