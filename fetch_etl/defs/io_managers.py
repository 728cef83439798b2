"""Where a run's messages live between steps: in memory, never pickled to disk.

The received messages hold clear IPs and device ids, so Dagster's default filesystem IO manager
(which pickles every output under DAGSTER_HOME) must never see them. The ingest runs in one process
(`in_process_executor`) and hands them from step to step through this store. The resource key
stays `batch_io_manager` (a public name, from before "batch" meant one SQS call).
"""

from __future__ import annotations

from dagster import InMemoryIOManager, InputContext, io_manager


class NotInMemoryError(RuntimeError):
    """An upstream output was asked for outside the run that produced it."""


class InMemoryRunIOManager(InMemoryIOManager):
    """An in-memory store that explains itself when an input is not there."""

    def load_input(self, context: InputContext) -> object:
        try:
            return super().load_input(context)
        except KeyError:
            upstream = context.upstream_output.asset_key.to_user_string() if context.upstream_output else "?"
            raise NotInMemoryError(
                f"{upstream} exists only in memory during the run that received it (it carries clear "
                "PII and SQS receipt handles); materialize raw_login_messages, masked_logins and "
                "user_logins together, e.g. 'Materialize all' or the ingest_logins job"
            ) from None


@io_manager(description="Keeps the run's in-flight login messages in memory only; nothing is written to disk.")
def batch_io_manager(_) -> InMemoryRunIOManager:
    return InMemoryRunIOManager()
