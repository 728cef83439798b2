"""Helpers for the deployment tests: the project's instance config pointed at a test PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]


def dagster_pg_env(database_url: str) -> dict[str, str]:
    """The DAGSTER_PG_* settings deploy/dagster.yaml reads, for the database at `database_url`."""
    parts = urlsplit(database_url)
    return {
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_USER": unquote(parts.username or "postgres"),
        "DAGSTER_PG_PASSWORD": unquote(parts.password or ""),
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
    }


def dagster_home(tmp_path: Path, config: Path) -> Path:
    """A DAGSTER_HOME holding `config` as its dagster.yaml, as the image's /opt/dagster/home does."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(config, home / "dagster.yaml")
    return home
