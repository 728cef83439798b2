"""Everything Dagster loads: assets, asset checks, job, sensor and resources configured from the environment."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from fetch_etl.assets import masked_logins, raw_login_messages, user_logins
from fetch_etl.checks import USER_LOGINS_CHECKS
from fetch_etl.io_managers import batch_io_manager
from fetch_etl.jobs import ingest_logins_job
from fetch_etl.redrive_job import redrive_dead_letters
from fetch_etl.resources import PiiMaskingResource, PostgresResource, SqsResource
from fetch_etl.resources.postgres import DEFAULT_DATABASE_URL
from fetch_etl.resources.sqs import DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_QUEUE_URL
from fetch_etl.sensors import login_queue_sensor


def env_str(name: str, default: str | None = None) -> str | EnvVar | None:
    """EnvVar when the variable is set (resolved in each run, never shown in the UI), else the default."""
    return EnvVar(name) if os.environ.get(name) else default


def env_int(name: str, default: int) -> int | EnvVar:
    return EnvVar.int(name) if os.environ.get(name) else default


defs = Definitions(
    assets=[raw_login_messages, masked_logins, user_logins],
    asset_checks=USER_LOGINS_CHECKS,
    jobs=[ingest_logins_job, redrive_dead_letters],
    sensors=[login_queue_sensor],
    executor=in_process_executor,
    resources={
        "sqs": SqsResource(
            queue_url=env_str("SQS_QUEUE_URL", DEFAULT_QUEUE_URL),
            dlq_url=env_str("SQS_DLQ_URL"),
            visibility_timeout=env_int("SQS_VISIBILITY_TIMEOUT", 900),
            max_messages_per_run=env_int("SQS_MAX_MESSAGES_PER_RUN", 10_000),
            region_name=env_str("AWS_DEFAULT_REGION", "us-east-1"),
            endpoint_url=env_str("AWS_ENDPOINT_URL"),
            aws_access_key_id=env_str("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env_str("AWS_SECRET_ACCESS_KEY"),
            protocol=env_str("SQS_PROTOCOL", "auto"),
            max_receive_count=env_int("SQS_MAX_RECEIVE_COUNT", DEFAULT_MAX_RECEIVE_COUNT),
            receive_threads=env_int("SQS_RECEIVE_THREADS", 8),
            delete_threads=env_int("SQS_DELETE_THREADS", 8),
        ),
        "postgres": PostgresResource(database_url=env_str("DATABASE_URL", DEFAULT_DATABASE_URL)),
        "pii_masking": PiiMaskingResource(
            mode=env_str("PII_MASKING_MODE", "hmac"),
            key=env_str("PII_MASKING_KEY"),
            key_file=env_str("PII_MASKING_KEY_FILE"),
        ),
        "batch_io_manager": batch_io_manager,
    },
)
