"""The Postgres warehouse as a Dagster resource (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

# Also importable from here, as before; defined apart so light importers skip Dagster.
from fetch_etl.warehouse.errors import DEFAULT_DATABASE_URL, WarehouseError, first_line

# Always UTF8 on the wire, whatever the server encoding: on a SQL_ASCII database the client encoding
# would otherwise be SQL_ASCII too, and psycopg then returns every text value as bytes.
CLIENT_ENCODING = "UTF8"


def describe_database(url: str) -> str:
    """`database 'x' on host:port as user` — what was tried, without the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database named by DATABASE_URL (unparseable URL)"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"database {info.get('dbname', '?')!r} on {host}:{port} as {info.get('user', '?')!r}"


class PostgresResource(ConfigurableResource):
    """The warehouse that holds `user_logins`."""

    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="libpq URL (DATABASE_URL).")
    connect_timeout: int = Field(default=10, description="Seconds to wait for a connection.")

    def describe(self) -> str:
        return describe_database(self.database_url)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection with application_name and a UTF8 client encoding; failures become one clear WarehouseError."""
        try:
            conn = psycopg.connect(
                self.database_url,
                connect_timeout=self.connect_timeout,
                application_name="fetch-etl",
                client_encoding=CLIENT_ENCODING,
                autocommit=True,
            )
        except psycopg.Error as err:
            raise WarehouseError(f"cannot connect to {self.describe()}: {first_line(err)}") from None
        try:
            yield conn
        except psycopg.Error as err:
            raise WarehouseError(f"PostgreSQL error on {self.describe()}: {first_line(err)}") from None
        finally:
            conn.close()
