"""Scale-out across runs: k `dagster asset materialize` processes on one queue, as the sensor's k runs would be.

Each process is a whole Dagster run (its own Python, instance and resources), taking up to ceil(N / k)
messages, like the runs the sensor requests for a backlog (SQS_MAX_PARALLEL_RUNS). The clock runs from the
first launch to the last exit, so process start-up is in the number, as it is in production.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.consumers import BENCH_KEY_HEX, Measurement, first_in_flight, sqs_client
from fetch_etl.local.stack import QueueUrls

BIN = Path(sys.executable).parent
COMMAND = [str(BIN / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"]
# Settings of the user's shell that would point the runs elsewhere are not passed on.
_DROPPED_PREFIXES = ("SQS_", "AWS_", "PII_", "DAGSTER_", "DATABASE_URL", "LOGIN_QUEUE_")


def run_env(endpoint: str, queues: QueueUrls, database_url: str, run_size: int, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        SQS_QUEUE_URL=queues.queue_url,
        SQS_DLQ_URL=queues.dlq_url,
        SQS_PROTOCOL="json",
        SQS_MAX_MESSAGES_PER_RUN=str(run_size),
        DATABASE_URL=database_url,
        PII_MASKING_KEY=BENCH_KEY_HEX,
        DAGSTER_HOME=str(home),
    )
    return env


def parallel_runs(
    endpoint: str,
    direct_endpoint: str,
    queues: QueueUrls,
    database_url: str,
    n: int,
    k: int,
    delay_ms: float,
    workdir: Path,
) -> Measurement:
    """Launch k runs at once on a queue of n messages; wait for all; count what reached Postgres."""
    run_size = math.ceil(n / k)
    marks: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=first_in_flight, args=(sqs_client(direct_endpoint, 1), queues.queue_url, stop, marks), daemon=True
    )
    watcher.start()
    processes: list[subprocess.Popen[bytes]] = []
    started = time.perf_counter()
    for index in range(k):
        home = (workdir / f"runs-{k}-{index}-{time.monotonic_ns()}").resolve()
        home.mkdir(parents=True)
        processes.append(
            subprocess.Popen(
                COMMAND,
                env=run_env(endpoint, queues, database_url, run_size, home),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    finished: list[float] = []
    failures: list[str] = []
    for process in processes:
        _, stderr = process.communicate(timeout=3600)
        finished.append(time.perf_counter() - started)
        if process.returncode != 0:
            failures.append(stderr.decode(errors="replace")[-1500:])
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {k} runs failed; last error:\n{failures[-1]}")
    with psycopg.connect(database_url) as conn:
        counts: Any = conn.execute(
            "SELECT (SELECT count(*) FROM user_logins), (SELECT count(*) FROM user_logins_rejected)"
        ).fetchone()
    loaded, rejected = int(counts[0]), int(counts[1])
    extra = {
        "parallel_runs": k,
        "run_size": run_size,
        "loaded": loaded,
        "rejected": rejected,
        "run_exit_seconds": [round(f, 2) for f in sorted(finished)],
        "launch_to_first_receive_seconds": round(marks["first_receive"] - started, 3) if marks else None,
    }
    return Measurement(f"fetch-etl x{k} runs", n, delay_ms, seconds, loaded + rejected, extra)
