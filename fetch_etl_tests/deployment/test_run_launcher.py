"""HealthCheckedRunLauncher's health check against a real code server (`dagster api grpc`, as in user-code)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from dagster import DagsterRun
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.utils import make_new_run_id

from fetch_etl.run_launcher import HealthCheckedRunLauncher
from fetch_etl_tests.deploy_env import ROOT
from fetch_etl_tests.deployment.test_compose_daemon import BIN, Processes, wait_for_code_server
from fetch_etl_tests.helpers import clean_env


def _run_on(socket_path: Path | None) -> DagsterRun:
    tags = {GRPC_INFO_TAG: json.dumps({"host": "localhost", "socket": str(socket_path)})} if socket_path else {}
    return DagsterRun(job_name="ingest_logins", run_id=make_new_run_id(), tags=tags)


def test_a_run_its_code_server_does_not_list_is_failed_and_an_unreachable_server_is_not_judged(
    tmp_path: Path,
) -> None:
    launcher = HealthCheckedRunLauncher()
    assert launcher.supports_check_run_worker_health
    socket_path = Path(tempfile.mkdtemp(prefix="fetch-etl-grpc-")) / "grpc.sock"
    # Nothing listens yet: as while the user-code container restarts. Not judged: monitoring asks again.
    assert launcher.check_run_worker_health(_run_on(socket_path)).status == WorkerStatus.RUNNING
    assert launcher.check_run_worker_health(_run_on(None)).status == WorkerStatus.RUNNING
    processes = Processes(tmp_path)
    try:
        command = [str(BIN / "dagster"), "api", "grpc", "-m", "fetch_etl.definitions", "-s", str(socket_path)]
        processes.start("user-code", command, clean_env(), ROOT)
        wait_for_code_server(socket_path, processes)
        # A (re)started code server runs nothing: the run it launched before died with the old one.
        result = launcher.check_run_worker_health(_run_on(socket_path))
        assert result.status == WorkerStatus.FAILED, result
        assert "no longer runs it" in str(result.msg)
    finally:
        processes.stop()
