"""Everything Dagster loads: assets, asset checks, job, sensor and resources configured from the environment."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from fetch_etl.defs.assets import masked_logins, raw_login_messages, user_logins
from fetch_etl.defs.automation import login_queue_sensor
from fetch_etl.defs.checks import USER_LOGINS_CHECKS
from fetch_etl.defs.io_managers import batch_io_manager
from fetch_etl.defs.jobs import ingest_logins_job
from fetch_etl.defs.redrive_job import redrive_dead_letters
from fetch_etl.defs.resources import masking_from_run_env, postgres_from_run_env, sqs_from_run_env

defs = Definitions(
    assets=[raw_login_messages, masked_logins, user_logins],
    asset_checks=USER_LOGINS_CHECKS,
    jobs=[ingest_logins_job, redrive_dead_letters],
    sensors=[login_queue_sensor],
    executor=in_process_executor,
    resources={
        # Resolved from the environment as each run starts, in the run's own process (see defs/resources.py).
        "sqs": sqs_from_run_env,
        "postgres": postgres_from_run_env,
        "pii_masking": masking_from_run_env,
        "batch_io_manager": batch_io_manager,
    },
)
