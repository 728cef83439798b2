"""TEST SCAFFOLDING: what deploy/standins/compose-check.sh asks of the running Compose deployment, from the host.

The messages are fetch_etl.local.synthetic's with fixed seeds, so the check knows every clear value: PRELOAD (the
stand-in LocalStack's init hook sends them at start, like the reference image's 100) and CRASH (sent before the
crash test). Subcommands (run with `uv run python deploy/standins/compose_probe.py ...`):

    ddl                      the reference user_logins DDL (the warehouse stand-in's init script)
    preload-json             the preloaded bodies, as a JSON list (baked into the LocalStack stand-in)
    pii-patterns             every clear IP and device id of both sets, one a line (for grep -F)
    send-crash ENDPOINT      send the CRASH set to login-queue
    wait-held ENDPOINT       wait until a run holds messages (some in flight), print how many
    queue ENDPOINT           print login-queue's visible / in-flight counts and the dead-letter queue's
    wait-loaded WAREHOUSE ENDPOINT SETS TIMEOUT
                             wait until user_logins holds every valid message of SETS (preload or preload+crash)
                             exactly once, the malformed ones are rejected and dead-lettered, and login-queue
                             is empty; print the seconds it took. Fails at once on a doubled row.
    graphql URL              the webserver's GraphQL lists the definitions' assets, checks and sensors
    latency WAREHOUSE ENDPOINT [--samples N] [--json FILE] [--dagster-db URL] [--interval S] [--timeout S]
                             enqueue -> row visible on the idle deployment: each sample waits for the queue and
                             Dagster's runs to be idle, sleeps a random part of the sensor interval, sends ONE
                             login of the LATENCY set and polls user_logins.message_id every 50 ms until its row
                             is there (fails after --timeout s: a correctness failure, not a slow one). With
                             --dagster-db (the dagster-postgres service's URL) each sample is split with the
                             sensor tick, the run's events and metadata (benchmarks/sensor_latency.py). Prints a
                             table; --json gets every sample, the median and the load average.

SETS names joined by `+`; `latency:N` is the first N messages of the LATENCY set (one body per sample, seed
LATENCY_SEED + i), so wait-loaded and pii-patterns know the latency samples' messages too.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse.schema import USER_LOGINS_DDL
from fetch_etl_tests.localstack_legacy import query_client

SETS = {"preload": (100, 2022, 0.01), "crash": (3000, 14, 0.0)}  # count, seed, malformed rate
LATENCY_SEED = 1800  # the latency samples' messages: `latency:N`, one body of seed LATENCY_SEED + i each
QUEUE, DLQ = "login-queue", "login-queue-dlq"
POLL_SECONDS = 0.05


def bodies(name: str) -> list[str]:
    if name.startswith("latency:"):
        count = int(name.removeprefix("latency:"))
        return [generate_bodies(1, seed=LATENCY_SEED + i, malformed_rate=0.0)[0] for i in range(count)]
    count, seed, malformed_rate = SETS[name]
    return generate_bodies(count, seed=seed, malformed_rate=malformed_rate)


def set_names(sets: str) -> list[str]:
    """`preload+latency:5+crash` -> its set names (`latency:0` and empty names drop out)."""
    return [name for name in sets.split("+") if name and name != "latency:0"]


def valid_logins(name: str) -> list[dict[str, Any]]:
    """The messages of a set the pipeline must load (the others are malformed: rejected, dead-lettered)."""
    out = []
    for body in bodies(name):
        try:
            login = json.loads(body)
        except ValueError:
            continue
        if "user_id" in login and "ip" in login and not str(login.get("app_version")).endswith("-beta"):
            out.append(login)
    return out


def queue_counts(endpoint: str) -> dict[str, int]:
    sqs = query_client(endpoint)
    counts = {}
    for name in (QUEUE, DLQ):
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except Exception:
            counts[name] = 0  # the dead-letter queue is created by the first run that needs it
            continue
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        counts[name] = int(attrs[names[0]])
        counts[f"{name} in flight"] = int(attrs[names[1]])
    return counts


def warehouse_state(url: str) -> tuple[dict[str, int], int]:
    """Rows per user_id (any doubled row shows as 2) and the number of rejected messages."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = dict(conn.execute("SELECT user_id, count(*) FROM user_logins GROUP BY user_id").fetchall())
        rejected = conn.execute("SELECT count(*) FROM user_logins_rejected").fetchone()
    return rows, int(rejected[0]) if rejected else 0


def wait_loaded(warehouse: str, endpoint: str, sets: str, timeout: float) -> None:
    names = set_names(sets)
    expected = {login["user_id"] for name in names for login in valid_logins(name)}
    malformed = sum(len(bodies(name)) for name in names) - len(expected)
    started = time.monotonic()
    state: object = None
    while time.monotonic() - started < timeout:
        try:
            rows, rejected = warehouse_state(warehouse)
            queues = queue_counts(endpoint)
        except Exception as err:  # a container restarting: ask again
            state = f"not reachable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            time.sleep(2)
            continue
        doubled = {user: n for user, n in rows.items() if n > 1}
        if doubled:
            raise SystemExit(f"doubled rows in user_logins: {len(doubled)} user_ids, e.g. {next(iter(doubled))}")
        unknown = set(rows) - expected
        if unknown:
            raise SystemExit(f"user_logins holds {len(unknown)} rows of no message sent")
        loaded = len(expected & set(rows))
        state = {"loaded": loaded, "of": len(expected), "rejected": rejected, **queues}
        empty = queues[QUEUE] == 0 and queues[f"{QUEUE} in flight"] == 0
        if loaded == len(expected) and rejected == malformed and queues.get(DLQ, 0) == malformed and empty:
            print(f"{time.monotonic() - started:.0f}")
            print(f"loaded: {state}", file=sys.stderr)
            return
        time.sleep(2)
    raise SystemExit(f"not every message of {sets} loaded exactly once within {timeout:.0f} s: {state}")


def wait_held(endpoint: str, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        held = queue_counts(endpoint)[f"{QUEUE} in flight"]
        if held:
            print(held)
            return
        time.sleep(0.2)
    raise SystemExit(f"no run held messages within {timeout:.0f} s")


def send(endpoint: str, name: str) -> None:
    sqs = query_client(endpoint)
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    batch = bodies(name)
    for start in range(0, len(batch), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(batch[start : start + 10])]
        if failed := sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed"):
            raise SystemExit(f"{len(failed)} messages not sent")
    print(f"sent {len(batch)} messages ({name} set) to {url}", file=sys.stderr)


def graphql(url: str) -> None:
    from fetch_etl.definitions import defs as build_definitions

    definitions = build_definitions()  # Dagster's lazy @definitions: build them as a code server does

    query = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        sensors { name }
        assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } } } } }"""
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        nodes = json.load(response)["data"]["repositoriesOrError"]["nodes"]
    sensors = {s["name"] for node in nodes for s in node["sensors"]}
    assets = {"/".join(a["assetKey"]["path"]) for node in nodes for a in node["assetNodes"]}
    checks = {
        c["name"] for node in nodes for a in node["assetNodes"] for c in a["assetChecksOrError"].get("checks", [])
    }
    graph = definitions.resolve_asset_graph()
    want_assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    want_checks = {key.name for key in graph.asset_check_keys}
    want_sensors = {s.name for s in definitions.sensors or []}
    missing = (want_assets - assets) | (want_checks - checks) | (want_sensors - sensors)
    if missing or "login_queue_sensor" not in sensors or len(want_assets) != 3:
        raise SystemExit(f"GraphQL lacks {sorted(missing)}: assets {assets}, checks {checks}, sensors {sensors}")
    print(f"GraphQL lists {len(assets)} assets, {len(checks)} checks, sensors {sorted(sensors)}")


@contextlib.contextmanager
def dagster_instance(url: str) -> Iterator[Any]:
    """A DagsterInstance on the deployment's own storage (dagster-postgres), from the host: read only here."""
    from dagster import DagsterInstance

    url = url.replace("postgresql://", "postgresql+psycopg2://", 1)  # as deploy/dagster.yaml's scheme
    with tempfile.TemporaryDirectory(prefix="fetch-etl-probe-home.") as home:
        config = {"storage": {"postgres": {"postgres_url": url}}, "telemetry": {"enabled": False}}
        Path(home, "dagster.yaml").write_text(json.dumps(config))  # JSON is YAML
        with DagsterInstance.from_config(home) as instance:
            yield instance


def _wait_for(what: str, done: Any, timeout: float, every: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := done():
            return value
        time.sleep(every)
    raise SystemExit(f"{what}: not within {timeout:.0f} s")


def _idle(endpoint: str, instance: Any) -> bool:
    """No message in login-queue (visible or held) and no ingest run unfinished."""
    counts = queue_counts(endpoint)
    if counts[QUEUE] or counts[f"{QUEUE} in flight"]:
        return False
    if instance is None:
        return True
    from dagster import RunsFilter

    from benchmarks.sensor_latency import FINISHED, INGEST_JOB_NAME

    runs = instance.get_runs(RunsFilter(job_name=INGEST_JOB_NAME), limit=5)
    return all(run.status in FINISHED for run in runs)


def _latency_sample(i: int, body: str, pause: float, conn: Any, endpoint: str, instance: Any, timeout: float) -> dict:
    """Wait for idle, sleep `pause`, send `body`, poll its row; split the wait when the instance is given."""
    from benchmarks.sensor_latency import breakdown, finished_run

    _wait_for("deployment idle (queue empty, no ingest run unfinished)", lambda: _idle(endpoint, instance), 300, 0.5)
    time.sleep(pause)
    sqs = query_client(endpoint)
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    sent = time.time()
    message_id = sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"]
    query = "SELECT 1 FROM user_logins WHERE message_id = %s"
    row = lambda: conn.execute(query, (message_id,)).fetchone() is not None  # noqa: E731
    try:
        _wait_for(f"sample {i}: the row of message {message_id}", row, timeout, POLL_SECONDS)
    except SystemExit as err:
        raise SystemExit(f"{err} (a correctness failure: the message was sent, its row never appeared)") from None
    visible = time.time()
    sample: dict[str, Any] = {"sample": i, "pause_before_s": round(pause, 2), "message_id": message_id}
    sample["sent_at"] = datetime.fromtimestamp(sent, UTC).isoformat(timespec="milliseconds")
    sample["enqueue_to_visible"] = round(visible - sent, 3)
    sample["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if instance is not None:
        run_id = _wait_for(f"sample {i}: its run finished", lambda: finished_run(instance, sent), timeout, 0.5)
        try:
            sample.update(breakdown(instance, run_id, sent, visible))
        except (AssertionError, KeyError) as err:  # the row is there: a split that fails is only reported
            sample["split_error"] = f"{type(err).__name__}: {err}"
    return sample


def latency(argv: list[str]) -> None:
    from tabulate import tabulate

    from benchmarks.sensor_latency import COMPONENTS, sensor_ticks, summarize, table

    parser = argparse.ArgumentParser(prog="compose_probe.py latency")
    parser.add_argument("warehouse")
    parser.add_argument("endpoint")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write every sample, the median, the load here")
    parser.add_argument("--dagster-db", default=None, help="the dagster-postgres URL: split each sample")
    parser.add_argument("--interval", type=float, default=5.0, help="the sensor interval (LOGIN_QUEUE_SENSOR_INTERVAL)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a sample's row may take to appear")
    parser.add_argument("--seed", type=int, default=None, help="seed of the pauses before the samples")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    samples = []
    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(dagster_instance(args.dagster_db)) if args.dagster_db else None
        conn = stack.enter_context(psycopg.connect(args.warehouse, autocommit=True, connect_timeout=5))
        for i, body in enumerate(bodies(f"latency:{args.samples}"), start=1):
            sample = _latency_sample(
                i, body, rng.uniform(0, args.interval), conn, args.endpoint, instance, args.timeout
            )
            samples.append(sample)
            print(f"  sample {i}: enqueue -> row visible {sample['enqueue_to_visible']:.2f} s", file=sys.stderr)
        ticks = sorted(t.timestamp for t in sensor_ticks(instance)) if instance else []
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(ticks)]
    options = [("DAGSTER_DB" if prev == "--dagster-db" else arg) for prev, arg in zip(["", *argv], argv, strict=False)]
    options = options[2:]  # the URLs (and the storage password) stay out of the record
    totals = [s["enqueue_to_visible"] for s in samples]
    summary = summarize(samples)
    print(tabulate(table(summary), headers="keys", tablefmt="github", floatfmt=".3f"))
    median, worst = statistics.median(totals), max(totals)
    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "deploy/standins/compose_probe.py latency WAREHOUSE ENDPOINT " + " ".join(options),
        "setup": {
            "deployment": "docker-compose.yml with .env.example on stand-in images (deploy/standins/compose-check.sh)",
            "sensor_interval_seconds": args.interval,
            "poll_seconds": POLL_SECONDS,
            "row_timeout_seconds": args.timeout,
            "split": "from dagster-postgres (ticks, run events, metadata)" if instance else "not split",
            "observed_tick_gap_median_seconds": statistics.median(gaps) if gaps else None,
            "observed_tick_gaps_seconds": gaps,  # the sensor's last (up to 50) ticks
        },
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "samples_n": len(samples),
        "median_seconds": round(median, 3),
        "max_seconds": round(worst, 3),
        "components": COMPONENTS,
        "summary": summary,
        "samples": samples,
    }
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"enqueue -> row visible in Compose: median {median:.1f} s of {len(samples)} (p-max {worst:.1f} s)")


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "ddl":
        print(USER_LOGINS_DDL.strip() + ";")
    elif command == "preload-json":
        print(json.dumps(bodies("preload")))
    elif command == "pii-patterns":  # [SETS]: default every fixed set
        values = set()
        names = set_names(args[0]) if args else list(SETS)
        for body in (body for name in names for body in bodies(name)):
            try:
                login = json.loads(body)
            except ValueError:
                continue
            values |= {str(login[field]) for field in ("ip", "device_id") if login.get(field)}
        print("\n".join(sorted(values)))
    elif command == "send-crash":
        send(args[0], "crash")
    elif command == "wait-held":
        wait_held(args[0])
    elif command == "queue":
        print(json.dumps(queue_counts(args[0])))
    elif command == "wait-loaded":
        wait_loaded(args[0], args[1], args[2], float(args[3]))
    elif command == "graphql":
        graphql(args[0])
    elif command == "latency":
        latency(args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
