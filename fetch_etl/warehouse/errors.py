"""The warehouse's default address and its one error type, apart from the Dagster resource in postgres.py.

So what only needs these (the CLI's option parsing, the schema migration, the advisory locks) loads without
importing Dagster, which takes seconds.
"""

from __future__ import annotations

DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@localhost:5432/postgres"


class WarehouseError(RuntimeError):
    """Postgres could not be used; one sentence naming host and database, never a password."""


def first_line(err: BaseException) -> str:
    """The primary message of a driver error, without CONTEXT/DETAIL lines that may quote data."""
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(err).strip().split("\n")[0]
    return text[:300]
