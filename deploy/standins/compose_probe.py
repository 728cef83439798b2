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
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

import psycopg

from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.warehouse.schema import USER_LOGINS_DDL
from fetch_etl_tests.localstack_legacy import query_client

SETS = {"preload": (100, 2022, 0.01), "crash": (3000, 14, 0.0)}  # count, seed, malformed rate
QUEUE, DLQ = "login-queue", "login-queue-dlq"


def bodies(name: str) -> list[str]:
    count, seed, malformed_rate = SETS[name]
    return generate_bodies(count, seed=seed, malformed_rate=malformed_rate)


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
    names = sets.split("+")
    expected = {login["user_id"] for name in names for login in valid_logins(name)}
    malformed = sum(SETS[name][0] for name in names) - len(expected)
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


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "ddl":
        print(USER_LOGINS_DDL.strip() + ";")
    elif command == "preload-json":
        print(json.dumps(bodies("preload")))
    elif command == "pii-patterns":
        values = set()
        for body in (body for name in SETS for body in bodies(name)):
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
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
