"""Which environment variable sets which resource field, resolved when a run (or a command) starts.

The defaults live on the resource fields only; a variable that is unset or empty leaves its field's default.
Dagster's `EnvVar` raises for an unset variable, and reading `os.environ` when `fetch_etl.definitions` is
imported would miss a variable set only on the run's task (the ECS and K8s launchers start each run with its
own environment). So `run_resources` below registers the `*_from_run_env` resources: Dagster calls them as
each run's resources are initialised, in the run's own process, and they build the real resource from
`os.environ` then. `fetch-etl status`, the other commands and the tests use the same maps.

AWS credentials are passed on only when set (key id, secret and AWS_SESSION_TOKEN for temporary STS/SSO
credentials, or AWS_PROFILE); with none set, boto3's own chain finds them (shared config and SSO, the ECS
container or EKS pod role, the instance profile).
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import Definitions, InitResourceContext, definitions, in_process_executor, resource

from fetch_etl.defs.io_managers import batch_io_manager
from fetch_etl.logins.resource import PiiMaskingResource
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse.resource import PostgresResource

SQS_ENV: dict[str, str] = {
    "queue_url": "SQS_QUEUE_URL",
    "dlq_url": "SQS_DLQ_URL",
    "visibility_timeout": "SQS_VISIBILITY_TIMEOUT",
    "max_messages_per_run": "SQS_MAX_MESSAGES_PER_RUN",
    "max_bytes_per_run": "SQS_MAX_BYTES_PER_RUN",
    "protocol": "SQS_PROTOCOL",
    "max_receive_count": "SQS_MAX_RECEIVE_COUNT",
    "receive_threads": "SQS_RECEIVE_THREADS",
    "delete_threads": "SQS_DELETE_THREADS",
    "region_name": "AWS_DEFAULT_REGION",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "profile_name": "AWS_PROFILE",
}
POSTGRES_ENV: dict[str, str] = {"database_url": "DATABASE_URL"}
MASKING_ENV: dict[str, str] = {
    "mode": "PII_MASKING_MODE",
    "key": "PII_MASKING_KEY",
    "key_file": "PII_MASKING_KEY_FILE",
}


def settings_from_env(env_map: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The fields whose variable is set (non-empty); the resource validates and converts the values."""
    return {field: environ[name] for field, name in env_map.items() if environ.get(name)}


def sqs_from_env(environ: Mapping[str, str], **overrides: Any) -> SqsResource:
    return SqsResource(**{**settings_from_env(SQS_ENV, environ), **overrides})


def postgres_from_env(environ: Mapping[str, str], **overrides: Any) -> PostgresResource:
    return PostgresResource(**{**settings_from_env(POSTGRES_ENV, environ), **overrides})


def masking_from_env(environ: Mapping[str, str], **overrides: Any) -> PiiMaskingResource:
    return PiiMaskingResource(**{**settings_from_env(MASKING_ENV, environ), **overrides})


@functools.cache
def _freeze_heap_at_exit() -> None:
    """Once per process: at exit, freeze the heap before the interpreter's final collection.

    That last full garbage collection walks every object Dagster, botocore and pandas created (~0.5 s and as
    much CPU per run process here); frozen objects are skipped, and the OS frees the memory anyway. Connections
    and files are closed by the code that opened them, not by the collector.
    """
    atexit.register(gc.freeze)


@resource(description="SQS queue and dead-letter queue, from the run's environment (SQS_*, AWS_*).")
def sqs_from_run_env(context: InitResourceContext) -> Iterator[SqsResource]:
    """The `sqs` resource, built from the run's environment as the run starts; torn down with it."""
    _freeze_heap_at_exit()
    sqs = sqs_from_env(os.environ)
    try:
        yield sqs
    finally:
        sqs.teardown_after_execution(context)  # a failed run lets go of its messages


@resource(description="The PostgreSQL warehouse, from the run's environment (DATABASE_URL).")
def postgres_from_run_env(context: InitResourceContext) -> PostgresResource:
    return postgres_from_env(os.environ)


@resource(description="The masking mode and key, from the run's environment (PII_MASKING_*); never shown.")
def masking_from_run_env(context: InitResourceContext) -> PiiMaskingResource:
    return masking_from_env(os.environ)


@definitions
def run_resources() -> Definitions:
    """Every run's resources (built from the run's environment as it starts) and its one-process executor."""
    return Definitions(
        resources={
            "sqs": sqs_from_run_env,
            "postgres": postgres_from_run_env,
            "pii_masking": masking_from_run_env,
            "batch_io_manager": batch_io_manager,
        },
        executor=in_process_executor,
    )
