"""Dagster resources: the SQS queue, the Postgres warehouse and the masking key."""

from fetch_etl.resources.masking import PiiMaskingResource
from fetch_etl.resources.postgres import PostgresResource
from fetch_etl.resources.sqs import SqsResource

__all__ = ["PiiMaskingResource", "PostgresResource", "SqsResource"]
