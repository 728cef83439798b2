"""Dagster resources: the SQS queue, the Postgres warehouse and the masking key.

Loaded on first use (PEP 562), so importing a light submodule (sqs_messages, warehouse_errors) does not
import Dagster: `fetch-etl --help` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fetch_etl.resources.masking import PiiMaskingResource
    from fetch_etl.resources.postgres import PostgresResource
    from fetch_etl.resources.sqs import SqsResource

_MODULES = {"PiiMaskingResource": "masking", "PostgresResource": "postgres", "SqsResource": "sqs"}
__all__ = ["PiiMaskingResource", "PostgresResource", "SqsResource"]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
