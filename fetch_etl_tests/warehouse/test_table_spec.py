"""The live tables match their one spec (warehouse/schema.py): names, order, types (format_type) and NOT NULL,
on a fresh database and on one where the reference image created user_logins first; and what derives from the
spec (the reference DDL, the staging table) still says what it said."""

from __future__ import annotations

import psycopg
import pytest

from fetch_etl.defs.metadata import COLUMN_DESCRIPTIONS, PREVIEW_COLUMNS, SHORTENED_COLUMNS
from fetch_etl.warehouse import load
from fetch_etl.warehouse.schema import TABLES, USER_LOGINS, USER_LOGINS_DDL, USER_LOGINS_REJECTED, Table, migrate

# The reference image's DDL, copied here from its init script rather than from the code under test.
REFERENCE_DDL = """
CREATE TABLE IF NOT EXISTS user_logins(
    user_id             varchar(128),
    device_type         varchar(32),
    masked_ip           varchar(256),
    masked_device_id    varchar(256),
    locale              varchar(32),
    app_version         integer,
    create_date         date
)"""


def live_columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str, bool]]:
    """(name, format_type, NOT NULL) of each column, in table order, read from the catalog."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (table,),
    ).fetchall()
    return [(str(name), str(sql_type), bool(not_null)) for name, sql_type, not_null in rows]


def spec_columns(table: Table) -> list[tuple[str, str, bool]]:
    return [(c.name, c.catalog_type, c.not_null) for c in table.columns]


def test_the_reference_ddl_derived_from_the_spec_is_the_reference_verbatim() -> None:
    assert USER_LOGINS_DDL == REFERENCE_DDL
    assert [c.name for c in USER_LOGINS.columns if c.origin == "created"] == [
        "user_id",
        "device_type",
        "masked_ip",
        "masked_device_id",
        "locale",
        "app_version",
        "create_date",
    ]


@pytest.mark.parametrize("start", ["fresh", "reference table"])
def test_every_live_table_matches_its_spec_after_migrate(database_url: str, start: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if start == "reference table":
            conn.execute(REFERENCE_DDL)
            assert live_columns(conn, "user_logins") == [
                ("user_id", "character varying(128)", False),
                ("device_type", "character varying(32)", False),
                ("masked_ip", "character varying(256)", False),
                ("masked_device_id", "character varying(256)", False),
                ("locale", "character varying(32)", False),
                ("app_version", "integer", False),
                ("create_date", "date", False),
            ]
        assert migrate(conn), "the migration had work to do"
        for table in TABLES:
            assert live_columns(conn, table.name) == spec_columns(table), table.name
        assert migrate(conn) == [], "and, once done, nothing is left to do"


def test_the_staging_table_has_the_types_of_the_columns_it_stages(database_url: str) -> None:
    with psycopg.connect(database_url) as conn, conn.transaction(force_rollback=True):
        conn.execute(load._STAGE_DDL)
        staged = live_columns(conn, "fetch_etl_stage")
    assert [(name, sql_type) for name, sql_type, _ in staged] == [
        (name, USER_LOGINS.column(name).catalog_type) for name in load.LOGIN_COLUMNS
    ]


def test_the_load_writes_every_column_but_those_set_in_sql() -> None:
    assert set(USER_LOGINS.names) - set(load.LOGIN_COLUMNS) == {"loaded_at"}
    set_in_sql = {"dead_lettered_at", "dead_letter_error"}  # by the ack path
    assert set(load.REJECT_COLUMNS) == set(USER_LOGINS_REJECTED.names) - set_in_sql


def test_the_ui_metadata_derives_from_the_spec() -> None:
    assert set(PREVIEW_COLUMNS) <= set(USER_LOGINS.names), "a preview column that user_logins does not have"
    assert {"masked_ip", "masked_device_id"} == SHORTENED_COLUMNS
    assert list(COLUMN_DESCRIPTIONS) == list(USER_LOGINS.names) and all(COLUMN_DESCRIPTIONS.values())
