"""DefaultRunLauncher plus a run-worker health check, so run monitoring fails a run whose process died.

Dagster's DefaultRunLauncher starts each run as a child process of the code server (`dagster api grpc`) and
cannot say whether that process still lives, so run monitoring never fails a run lost with its container
(`docker compose kill`, a host dying): it stays STARTED until `max_runtime_seconds`, and meanwhile the
run queue's limit of one ingest run and the sensor's active-run check block all ingest. The code server
knows which runs it is executing (its GetCurrentRuns call). This launcher asks it, at the address the launch
recorded on the run (the `.dagster/grpc_info` tag): a STARTED run the server does not list has lost its
process, and the monitoring daemon marks it failed at its next poll (deploy/dagster.yaml). A server that
does not answer is not judged: it is restarting or unreachable, and the next poll asks again.

Only the daemon calls this; the deployment names it in deploy/dagster.yaml instead of DefaultRunLauncher.
"""

from __future__ import annotations

import json

from dagster import DagsterRun, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import GetCurrentRunsResult
from dagster._serdes import deserialize_value


class HealthCheckedRunLauncher(DefaultRunLauncher):
    """Launches runs like DefaultRunLauncher; answers run monitoring's health check from the code server."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        grpc_info = run.tags.get(GRPC_INFO_TAG)
        if not grpc_info:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no code server address on the run yet")
        info = json.loads(grpc_info)
        client = DagsterGrpcClient(
            host=info.get("host"), port=info.get("port"), socket=info.get("socket"), use_ssl=bool(info.get("use_ssl"))
        )
        try:
            current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
        except Exception as err:  # unreachable or restarting: judge at the next poll, never on a guess
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"code server not answering: {type(err).__name__}")
        if run.run_id in current:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, "the code server that launched this run no longer runs it (its process died)"
        )
