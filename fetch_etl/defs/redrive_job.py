"""`redrive_dead_letters`: `fetch-etl redrive` as a job the Dagster UI can launch, with the same options."""

# No `from __future__ import annotations`: Dagster reads the op's Config annotation when it is decorated.

from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from fetch_etl.ops.redrive import redrive
from fetch_etl.queue.resource import SqsResource

REDRIVE_JOB_NAME = "redrive_dead_letters"


class RedriveConfig(Config):
    """The options of `fetch-etl redrive`."""

    dry_run: bool = Field(default=False, description="Move nothing; report what would move.")
    reason: list[str] = Field(default=[], description="Only dead letters with one of these reason_code values.")
    limit: int | None = Field(default=None, ge=1, description="Move at most this many messages.")


@op(
    name="redrive",
    description="Move dead letters back to the source queue, keeping original_message_id and adding redriven_at.",
)
def redrive_op(context: OpExecutionContext, config: RedriveConfig, sqs: SqsResource) -> Output[None]:
    result = redrive(sqs, config.reason, config.limit, config.dry_run)
    metadata = {key: MetadataValue.json(v) if isinstance(v, dict) else v for key, v in result.metadata().items()}
    context.log.info("redrive from %s to %s:\n%s", result.dlq_url, result.queue_url, result.table())
    if (failure := result.failure()) is not None:
        raise Failure(description=failure, metadata=metadata)
    return Output(None, metadata=metadata)


@job(name=REDRIVE_JOB_NAME, description="Replay the dead-letter queue into the source queue (see docs/operations.md).")
def redrive_dead_letters() -> None:
    redrive_op()
