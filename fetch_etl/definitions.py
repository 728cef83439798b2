"""Everything Dagster loads: assets, asset checks, job, sensor and resources configured from the environment."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from fetch_etl.assets import masked_logins, raw_login_messages, user_logins
from fetch_etl.checks import USER_LOGINS_CHECKS
from fetch_etl.io_managers import batch_io_manager
from fetch_etl.jobs import ingest_logins_job
from fetch_etl.redrive_job import redrive_dead_letters
from fetch_etl.resources.env import masking_from_run_env, postgres_from_run_env, sqs_from_run_env
from fetch_etl.sensors import login_queue_sensor

defs = Definitions(
    assets=[raw_login_messages, masked_logins, user_logins],
    asset_checks=USER_LOGINS_CHECKS,
    jobs=[ingest_logins_job, redrive_dead_letters],
    sensors=[login_queue_sensor],
    executor=in_process_executor,
    resources={
        # Resolved from the environment as each run starts, in the run's own process (see resources/env.py).
        "sqs": sqs_from_run_env,
        "postgres": postgres_from_run_env,
        "pii_masking": masking_from_run_env,
        "batch_io_manager": batch_io_manager,
    },
)
