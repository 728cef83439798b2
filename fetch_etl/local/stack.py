"""The local stack for `fetch-etl demo` and `fetch-etl dev`: real servers, queues, a dev key, DAGSTER_HOME.

Everything lives under one state folder (./.fetch_etl by default); nothing needs Docker or an account.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, NamedTuple, Self

import boto3

from fetch_etl.local.servers import EmbeddedPostgres, LocalStackError, MotoSqsServer
from fetch_etl.queue.messages import DEFAULT_MAX_RECEIVE_COUNT, default_dlq_name

# The instance of `fetch-etl dev`: no telemetry; the run queue looked at every second (Dagster's default is
# 5 s, which a login waits on average 2.5 s of between the sensor's run request and the run's start); and the
# login_queue pool counted per run, as in deploy/dagster.yaml, so a "Materialize all" and a sensor run never
# receive at the same time.
DEV_DAGSTER_YAML = """telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
concurrency:
  pools:
    granularity: run
    default_limit: 1
"""

logger = logging.getLogger(__name__)
AWS_REGION = "us-east-1"


class QueueUrls(NamedTuple):
    """A work queue and the dead-letter queue its unprocessable messages go to."""

    queue_url: str
    dlq_url: str


def make_sqs_client(endpoint: str) -> Any:
    """boto3 SQS client for a moto endpoint with the dummy credentials moto accepts."""
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=AWS_REGION)
    return session.client("sqs", endpoint_url=endpoint)


# SQS's own redrive only as a backstop behind the pipeline's poison rule (SQS_MAX_RECEIVE_COUNT).
LOCAL_REDRIVE_MAX_RECEIVE_COUNT = 2 * DEFAULT_MAX_RECEIVE_COUNT


def create_queue_pair(
    sqs_client: Any, name: str, *, max_receive_count: int | None = LOCAL_REDRIVE_MAX_RECEIVE_COUNT
) -> QueueUrls:
    """Create `name` and its default DLQ `name-dlq`, with SQS's own redrive after max_receive_count failed receives."""
    dlq_url: str = sqs_client.create_queue(QueueName=default_dlq_name(name))["QueueUrl"]
    attributes: dict[str, str] = {}
    if max_receive_count is not None:
        attrs = sqs_client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        policy = {
            "deadLetterTargetArn": attrs["Attributes"]["QueueArn"],
            "maxReceiveCount": max_receive_count,
        }
        attributes["RedrivePolicy"] = json.dumps(policy)
    queue_url: str = sqs_client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return QueueUrls(queue_url, dlq_url)


def ensure_dev_masking_key(state_dir: Path) -> tuple[Path, bool]:
    """Create a random 32-byte dev key once (0600 from birth); returns (path, created). Never logs it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "dev_masking.key"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            logger.warning("Masking key file %s is readable by group/others; chmod 600 it", path)
        return path, False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")
    except BaseException:
        path.unlink(missing_ok=True)  # never leave an empty/partial key to be reused
        raise
    logger.info("created a development masking key at %s (mode 0600); keep it to compare tokens", path)
    return path, True


class LocalStack:
    """Embedded PostgreSQL + moto SQS (+ queues, dev key, DAGSTER_HOME) for running the pipeline locally."""

    def __init__(
        self,
        state_dir: Path = Path(".fetch_etl"),
        postgres_port: int | None = None,
        sqs_port: int | None = None,
        queue_name: str = "login-queue",
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.queue_name = queue_name
        self.postgres = EmbeddedPostgres(self.state_dir / "postgres", postgres_port)
        self.sqs = MotoSqsServer(sqs_port, log_file=self.state_dir / "logs" / "moto.log")
        self.dagster_home = self.state_dir / "dagster_home"
        self._pids_file = self.state_dir / "pids.json"
        self._queues: QueueUrls | None = None
        self._key_file: Path | None = None
        self._key_created = False

    def start(self) -> Self:
        """Start both servers and create queues, key and DAGSTER_HOME; on failure stop what did start."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.postgres.start()
            self.sqs.start()
            self._write_pids()
            self._key_file, self._key_created = ensure_dev_masking_key(self.state_dir)
            self.dagster_home.mkdir(exist_ok=True)
            dagster_yaml = self.dagster_home / "dagster.yaml"
            if not dagster_yaml.exists():
                dagster_yaml.write_text(DEV_DAGSTER_YAML)
            try:
                self._queues = create_queue_pair(make_sqs_client(self.sqs.endpoint), self.queue_name)
            except Exception as exc:
                raise LocalStackError(
                    f"Could not create SQS queue {self.queue_name!r} on {self.sqs.endpoint} ({exc}); "
                    f"see {self.sqs.log_file}."
                ) from exc
            logger.info("SQS queue %s with DLQ %s ready", self._queues.queue_url, self._queues.dlq_url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers by PID and remove pids.json. Safe to call twice."""
        try:
            self.sqs.stop()
        finally:
            self.postgres.stop()
            self._pids_file.unlink(missing_ok=True)
            self._queues = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def sqs_endpoint(self) -> str:
        return self.sqs.endpoint

    @property
    def queue_url(self) -> str:
        return self._started_queues().queue_url

    @property
    def dlq_url(self) -> str:
        return self._started_queues().dlq_url

    @property
    def key_file(self) -> Path:
        if self._key_file is None:
            raise LocalStackError("LocalStack is not started; call start() first.")
        return self._key_file

    @property
    def dev_key_created(self) -> bool:
        """True if this start() generated a new key (so earlier pseudonyms are no longer comparable)."""
        return self._key_created

    def env(self) -> dict[str, str]:
        """Environment for the pipeline (Dagster, CLI) to talk to this stack instead of AWS."""
        return {
            "AWS_ENDPOINT_URL": self.sqs_endpoint,
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "SQS_QUEUE_URL": self.queue_url,
            "SQS_DLQ_URL": self.dlq_url,
            "DATABASE_URL": self.database_url,
            "PII_MASKING_KEY_FILE": str(self.key_file.resolve()),
            "DAGSTER_HOME": str(self.dagster_home),
            # moto's server is not safe for concurrent changes to one queue: parallel DeleteMessageBatch
            # calls can put back messages another call just deleted. Real SQS and LocalStack are.
            "SQS_DELETE_THREADS": "1",
        }

    def _started_queues(self) -> QueueUrls:
        if self._queues is None:
            raise LocalStackError("LocalStack is not started; call start() first.")
        return self._queues

    def _write_pids(self) -> None:
        """Tell an operator what is running, e.g. to clean up by PID after a crashed session."""
        info = {
            "postgres": {
                "pid": self.postgres.pid,
                "url": self.postgres.url,
                "data_dir": str(self.postgres.data_dir),
            },
            "sqs": {"pid": self.sqs.pid, "endpoint": self.sqs.endpoint, "log": str(self.sqs.log_file)},
        }
        tmp = self._pids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self._pids_file)


def local_stack_env(state_dir: Path) -> dict[str, str]:
    """The settings of the local stack that `fetch-etl dev` or `demo` runs from `state_dir` (its pids.json)."""
    pids = state_dir / "pids.json"
    try:
        info = json.loads(pids.read_text())
        endpoint, database_url = info["sqs"]["endpoint"], info["postgres"]["url"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LocalStackError(
            f"no running local stack under {state_dir} (no readable {pids.name}); start one with `fetch-etl dev`"
        ) from None
    client = make_sqs_client(endpoint)
    try:
        queue_url = client.get_queue_url(QueueName="login-queue")["QueueUrl"]
        dlq_url = client.get_queue_url(QueueName=default_dlq_name("login-queue"))["QueueUrl"]
    except Exception as err:  # botocore's many connection errors: one sentence is enough here
        raise LocalStackError(f"the local stack's SQS server at {endpoint} does not answer: {err}") from None
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "SQS_QUEUE_URL": queue_url,
        "SQS_DLQ_URL": dlq_url,
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str((state_dir / "dagster_home").resolve()),
    }
