"""The things measured: bare drain (limit), the take-home baseline, fetch-etl itself, load vs raw COPY."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import psutil
import psycopg
import psycopg2
import psycopg2.extras
from botocore.config import Config
from dagster import materialize

from fetch_etl.defs.assets import masked_logins, raw_login_messages, user_logins
from fetch_etl.defs.io_managers import batch_io_manager
from fetch_etl.local.stack import QueueUrls
from fetch_etl.logins import frame as login_frame
from fetch_etl.logins.resource import PiiMaskingResource
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse.load import LOGIN_COLUMNS, load_run, migrate, rows_for_copy
from fetch_etl.warehouse.resource import PostgresResource

BENCH_KEY_HEX = "5a" * 32  # a throwaway masking key for synthetic data only
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_PARALLELISM_FIELDS = ("receive_threads", "receivers", "receive_parallelism", "parallelism")


@dataclass
class Measurement:
    what: str
    n: int
    delay_ms: float
    seconds: float
    messages: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def sqs_client(endpoint: str, pool: int = 16) -> Any:
    config = Config(max_pool_connections=max(pool, 10), retries={"max_attempts": 3, "mode": "standard"})
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    return session.client("sqs", endpoint_url=endpoint, config=config)


def pipeline_receive_parallelism() -> tuple[int, str]:
    """Receive threads SqsResource uses, read from its fields (1 when it has no such field)."""
    fields = SqsResource.model_fields
    for name in _PARALLELISM_FIELDS:
        if name in fields and isinstance(fields[name].default, int):
            return int(fields[name].default), f"SqsResource.{name}"
    return 1, "SqsResource has no receive-parallelism field: one receiver"


def seed(endpoint: str, queue_url: str, bodies: Sequence[str], threads: int = 8) -> float:
    """Send bodies with parallel SendMessageBatch; returns seconds taken."""
    client = sqs_client(endpoint, threads)
    chunks = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]

    def send(chunk: Sequence[str]) -> None:
        response = client.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)]
        )
        if response.get("Failed"):
            raise RuntimeError(f"seeding failed: {response['Failed'][:1]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, chunks))
    return time.perf_counter() - started


def _receive(client: Any, queue_url: str) -> list[dict[str, Any]]:
    return client.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=900
    ).get("Messages", [])


def _delete(client: Any, queue_url: str, messages: Sequence[dict[str, Any]]) -> None:
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    client.delete_message_batch(QueueUrl=queue_url, Entries=entries)


def drain_limit(endpoint: str, queue_url: str, n: int, threads: int, delay_ms: float) -> Measurement:
    """Bare drain: receive 10 + delete batch in `threads` loops, no processing, until n are handled."""
    client = sqs_client(endpoint, threads)
    lock = threading.Lock()
    done = [0]

    def loop() -> None:
        while True:
            with lock:
                if done[0] >= n:
                    return
            messages = _receive(client, queue_url)
            if not messages:
                return
            _delete(client, queue_url, messages)
            with lock:
                done[0] += len(messages)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(loop) for _ in range(threads)]:
            future.result()
    return Measurement("limit", n, delay_ms, time.perf_counter() - started, done[0], {"threads": threads})


BASELINE_DDL = """CREATE TABLE IF NOT EXISTS baseline_logins(
    user_id varchar(128), device_type varchar(32), masked_ip varchar(256), masked_device_id varchar(256),
    locale varchar(32), app_version integer, create_date date)"""


def _baseline_row(body: str) -> tuple[Any, ...] | None:
    try:
        event = json.loads(body)
        version = int(str(event["app_version"]).replace(".", ""))
        return (
            event["user_id"],
            event["device_type"],
            hashlib.sha256(event["ip"].encode()).hexdigest(),
            hashlib.sha256(event["device_id"].encode()).hexdigest(),
            event.get("locale"),
            version,
            time.strftime("%Y-%m-%d"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def baseline(endpoint: str, queue_url: str, database_url: str, n: int, delay_ms: float) -> Measurement:
    """The common take-home consumer: one thread; receive 10, sha256, execute_values + commit, delete."""
    client = sqs_client(endpoint, 1)
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(BASELINE_DDL)
        conn.commit()
        handled = loaded = 0
        started = time.perf_counter()
        while handled < n:
            messages = _receive(client, queue_url)
            if not messages:
                break
            rows = [row for m in messages if (row := _baseline_row(m["Body"])) is not None]
            with conn.cursor() as cur:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO baseline_logins (user_id, device_type, masked_ip, masked_device_id, locale, "
                    "app_version, create_date) VALUES %s",
                    rows,
                )
            conn.commit()
            _delete(client, queue_url, messages)
            handled += len(messages)
            loaded += len(rows)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Measurement("baseline", n, delay_ms, seconds, handled, {"loaded": loaded})


class _RssSampler:
    """Peak resident set size of this process while a run executes (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def first_in_flight(client: Any, queue_url: str, stop: threading.Event, out: dict[str, float]) -> None:
    """Time the first message goes in flight (polled every 10 ms on the direct endpoint): the first receive."""
    while not stop.is_set():
        attrs = client.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        if int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)) > 0:
            out["first_receive"] = time.perf_counter()
            return
        stop.wait(0.01)


def _node_metadata(result: Any, node: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(node)
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def _bench_resources(
    endpoint: str, queues: QueueUrls, database_url: str, run_size: int, receive_threads: int | None
) -> dict[str, Any]:
    threads = {} if receive_threads is None else {"receive_threads": receive_threads}
    return {
        "sqs": SqsResource(
            queue_url=queues.queue_url,
            dlq_url=queues.dlq_url,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            protocol="json",
            visibility_timeout=900,
            max_messages_per_run=run_size,
            **threads,
        ),
        "postgres": PostgresResource(database_url=database_url),
        "pii_masking": PiiMaskingResource(key=BENCH_KEY_HEX, mode="hmac"),
        "batch_io_manager": batch_io_manager,
    }


def fetch_etl_run(
    endpoint: str,
    direct_endpoint: str,
    queues: QueueUrls,
    database_url: str,
    n: int,
    delay_ms: float,
    run_size: int,
    receive_threads: int | None = None,
) -> Measurement:
    """The three assets materialized in-process, end to end, in back-to-back runs of at most `run_size`.

    That is what the sensor does with one run at a time (SQS_MAX_PARALLEL_RUNS=1), minus the sensor's
    interval; memory is bounded by one run's batch, not by N.
    """
    marks: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=first_in_flight, args=(sqs_client(direct_endpoint, 1), queues.queue_url, stop, marks), daemon=True
    )
    watcher.start()
    stages = {"receive": 0.0, "parse_mask": 0.0, "load_dlq_delete": 0.0}
    totals = {"received": 0, "loaded": 0, "rejected": 0, "deleted": 0}
    runs: list[float] = []
    paths: set[str] = set()
    with _RssSampler() as rss:
        started = time.perf_counter()
        while totals["received"] < n:
            resources = _bench_resources(
                endpoint, queues, database_url, min(run_size, n - totals["received"]), receive_threads
            )
            run_started = time.perf_counter()
            result = materialize(
                [raw_login_messages, masked_logins, user_logins], resources=resources, run_config=QUIET_RUN_CONFIG
            )
            runs.append(time.perf_counter() - run_started)
            raw = _node_metadata(result, "raw_login_messages")
            masked = _node_metadata(result, "masked_logins")
            loaded = _node_metadata(result, "user_logins")
            for stage, meta in zip(stages, (raw, masked, loaded), strict=True):
                stages[stage] += float(meta.get("elapsed_seconds") or 0)
            for key, meta_key, meta in (
                ("received", "received", raw),
                ("loaded", "loaded", loaded),
                ("rejected", "rejected", loaded),
                ("deleted", "deleted_from_queue", loaded),
            ):
                totals[key] += int(meta.get(meta_key) or 0)
            paths.add(str(loaded.get("load_path")))
            if not raw.get("received"):
                break
        seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    extra = {
        "runs": len(runs),
        "run_size": run_size,
        "run_seconds": [round(r, 3) for r in runs],
        "stages_seconds": {k: round(v, 3) for k, v in stages.items()},
        "stages_per_second": {k: round(n / v, 1) if v else None for k, v in stages.items()},
        **totals,
        "load_paths": sorted(paths),
        "start_to_first_receive_seconds": round(marks["first_receive"] - started, 3) if marks else None,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "rss_before_mb": round(rss.before / 2**20, 1),
    }
    if receive_threads is not None:
        extra["receive_threads"] = receive_threads
    return Measurement("fetch-etl", n, delay_ms, seconds, totals["received"], extra)


def _timed_copy(conn: psycopg.Connection, table: str, frame: Any) -> float:
    """DataFrame -> rows -> COPY into `table`, in one transaction; the same conversion load_run does."""
    started = time.perf_counter()
    sql = f"COPY {table} ({', '.join(LOGIN_COLUMNS)}) FROM STDIN"
    with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
        for row in rows_for_copy(frame, LOGIN_COLUMNS):
            copy.write_row(row)
    return time.perf_counter() - started


def load_vs_copy(database_url: str, bodies: Sequence[str]) -> dict[str, Any]:
    """fetch_etl.warehouse.load.load_run on a masked frame vs a plain COPY of the same rows from the same frame.

    Raw COPY goes into a bare table of user_logins' columns (no index: the issue's yardstick) and, for
    reference, into a copy with user_logins' indexes (the unique MessageId index idempotency needs).
    """
    now_ms = str(int(time.time() * 1000))
    messages = [QueueMessage(str(uuid.uuid4()), "r", body, now_ms, 1) for body in bodies]
    masker = PiiMaskingResource(key=BENCH_KEY_HEX, mode="hmac").masker()
    started = time.perf_counter()
    frame = login_frame.mask_messages(messages, masker)
    mask_seconds = time.perf_counter() - started
    logins, rejects = login_frame.loadable(frame), login_frame.rejected(frame)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE raw_copy (LIKE user_logins INCLUDING DEFAULTS)")
        conn.execute("CREATE TABLE raw_copy_indexed (LIKE user_logins INCLUDING ALL)")
        copy_seconds = _timed_copy(conn, "raw_copy", logins)
        indexed_seconds = _timed_copy(conn, "raw_copy_indexed", logins)
        started = time.perf_counter()
        result = load_run(conn, logins, rejects)
        load_seconds = time.perf_counter() - started
    rows = len(logins)
    return {
        "n": len(bodies),
        "rows": rows,
        "inserted": result.inserted,
        "load_path": result.path,
        "mask_seconds": round(mask_seconds, 4),
        "mask_per_second": round(len(bodies) / mask_seconds, 1),
        "load_seconds": round(load_seconds, 4),
        "load_rows_per_second": round(rows / load_seconds, 1),
        "copy_seconds": round(copy_seconds, 4),
        "copy_rows_per_second": round(rows / copy_seconds, 1),
        "copy_indexed_seconds": round(indexed_seconds, 4),
        "copy_indexed_rows_per_second": round(rows / indexed_seconds, 1),
    }
