"""The boto3 configuration fields of the SQS resource, mirroring dagster-aws's `ResourceWithBoto3Configuration`.

Its fields, names, types, defaults and descriptions are dagster-aws 0.29.27's, so configuration written for
dagster-aws resources works unchanged. We declare them here instead of subclassing because importing
`dagster_aws` runs its package `__init__`, which eagerly imports all its components: seconds in every run
process. fetch_etl_tests/queue/test_aws_config.py keeps the two field sets equal.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class Boto3Configuration(ConfigurableResource):
    """Region, endpoint, credentials and retries for a boto3 session, as dagster-aws names them."""

    region_name: str | None = Field(default=None, description="Specifies a custom region for the Boto3 session")
    max_attempts: int = Field(
        default=5,
        description=(
            "This provides Boto3's retry handler with a value of maximum retry attempts, where the"
            " initial call counts toward the max_attempts value that you provide"
        ),
    )
    profile_name: str | None = Field(default=None, description="Specifies a profile to connect that session")
    use_ssl: bool = Field(default=True, description="Whether or not to use SSL. By default, SSL is used.")
    endpoint_url: str | None = Field(default=None, description="Specifies a custom endpoint for the Boto3 session.")
    verify: bool | None = Field(
        default=True,
        description=("Whether or not to verify SSL certificates. By default SSL certificates are verified."),
    )
    aws_access_key_id: str | None = Field(
        default=None, description="AWS access key ID to use when creating the boto3 session."
    )
    aws_secret_access_key: str | None = Field(
        default=None, description="AWS secret access key to use when creating the boto3 session."
    )
    aws_session_token: str | None = Field(
        default=None, description="AWS session token to use when creating the boto3 session."
    )
