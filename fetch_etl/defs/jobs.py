"""The ingest job: the three login assets, in one process so the batch never leaves memory."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

INGEST_JOB_NAME = "ingest_logins"
INGEST_TAGS = {"fetch_etl/ingest": "login-queue"}  # the run coordinator's concurrency key

ingest_logins_job = define_asset_job(
    INGEST_JOB_NAME,
    selection=AssetSelection.groups("logins"),
    executor_def=in_process_executor,
    tags=INGEST_TAGS,
    description="Receive a batch from SQS, mask it, load it into user_logins, then ack the queue.",
)
