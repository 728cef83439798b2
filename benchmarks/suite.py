"""Issue 18's benchmark in one command: throughput as users run it, the start-up timeline, latency, CPU.

    uv run --group bench python -m benchmarks.suite [--quick] [--latency-samples 5] [--localstack-python PATH]
        [--parts throughput,timeline,latency,compose-latency]

On LocalStack SQS + embedded PostgreSQL (127.0.0.1 only), side by side in one run, for loopback with
--loopback-n messages and +--delay-ms per queue request with --delayed-n messages: the bare drain (limit),
the seed-style consumer, fetch-etl in-process (dagster.materialize) and fetch-etl as a whole
`dagster asset materialize -m fetch_etl.definitions --select '*'` process, one run per drain
(SQS_MAX_MESSAGES_PER_RUN = N). Each process run leaves a start-up timeline (benchmarks/timeline.py) and its
CPU seconds after the first ReceiveMessage, set against the seed-style consumer's on the same queue. Then
--timeline-runs small runs give the fixed cost of a run, and benchmarks.latency (dagster-daemon + a code
server, sensor at its default) gives enqueue -> row visible and the timeline of daemon-launched runs; the
compose-latency part measures the same in the Compose deployment with .env.example, where a Docker engine can
be run here (root, dockerd, docker-compose, debootstrap: deploy/standins/compose-check.sh up to its latency
step, on stand-in images), and is skipped, saying why, elsewhere. Last, `fetch-etl --help`'s wall time.
`uptime`'s load averages are recorded before and after each part.
Writes benchmarks/results/suite-<date>.json and suite.png (and compose-latency-<date>.json when that part
ran). --quick: small sizes, 2 latency samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import report, suite_report
from benchmarks.consumers import Measurement, baseline, drain_limit, fetch_etl_run, pipeline_receive_parallelism
from benchmarks.localstack_env import LocalStackServer, ensure_localstack_python, localstack_version
from benchmarks.relay import RelayProcess
from benchmarks.throughput import Bench, _code_state
from benchmarks.timeline import (
    BIN,
    ROOT,
    compile_bytecode,
    run_process_marks,
    summary,
    timeline_env,
    whole_process_run,
)
from fetch_etl.local.servers import EmbeddedPostgres, drop_database
from fetch_etl.local.synthetic import generate_bodies

RESULTS = Path(__file__).parent / "results"
KINDS = ("limit", "baseline", "fetch-etl", "fetch-etl process")


def load_average() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "1m": one, "5m": five, "15m": fifteen}


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def consume(
    bench: Bench, kind: str, bodies: list[str], delay: float, threads: int, workdir: Path, run_size: int | None = None
) -> Measurement:
    """One consumer on a fresh queue of `bodies` (and a fresh database where it writes)."""
    n = len(bodies)
    endpoint = bench.relay.endpoint if delay and bench.relay else bench.localstack.endpoint
    queues, seeded = bench._queue(kind.replace(" ", "-"), bodies)
    name = None
    try:
        if kind == "limit":
            result = drain_limit(endpoint, queues.queue_url, n, threads, delay)
        else:
            name, url = bench._database(kind.replace(" ", "-"))
            if kind == "baseline":
                cpu = _cpu()
                result = baseline(endpoint, queues.queue_url, url, n, delay)
                seconds = _cpu() - cpu  # one thread, nothing else running in this process meanwhile
                result.extra["cpu_seconds"] = round(seconds, 3)
                result.extra["cpu_seconds_per_1000_messages"] = round(seconds / max(result.messages, 1) * 1000, 3)
            elif kind == "fetch-etl":
                result = fetch_etl_run(endpoint, bench.localstack.endpoint, queues, url, n, delay, max(n, 1))
            else:
                result = whole_process_run(
                    endpoint, queues, url, n, delay, workdir / "dagster_home", workdir / "marks", run_size
                )
    finally:
        for queue_url in queues:
            with contextlib.suppress(Exception):
                bench.direct.delete_queue(QueueUrl=queue_url)
        if name:
            with contextlib.suppress(Exception):
                drop_database(bench.pg_url, name)
    result.extra["seed_seconds"] = round(seeded, 2)
    result.extra["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    print(f"  {kind:17} N={n:>6,} +{delay:g} ms: {result.per_second:7.0f} msg/s ({result.seconds:.2f} s)", flush=True)
    return result


def fetch_etl_help(times: int = 5) -> dict[str, Any]:
    """Wall time of `fetch-etl --help` from the installed environment (the console script)."""
    walls = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run([str(BIN / "fetch-etl"), "--help"], capture_output=True, check=True)
        walls.append(time.perf_counter() - started)
    return {
        "seconds": [round(w, 3) for w in walls],
        "min": round(min(walls), 3),
        "median": round(statistics.median(walls), 3),
    }


def operator_imports() -> dict[str, Any]:
    """Which heavy packages the modules behind `status` and `reveal` import (what their start-up pays for)."""
    code = (
        "import json, sys\n"
        "import fetch_etl.ops.status, fetch_etl.ops.pii_admin, fetch_etl.ops.cli_pii\n"
        "print(json.dumps({m: m in sys.modules for m in ('pandas', 'dagster', 'dagster._core.definitions.assets', "
        "'fetch_etl.defs.assets', 'dagster_aws')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def latency(samples: int, localstack_python: str, workdir: Path) -> dict[str, Any]:
    """benchmarks.latency in its own process (its own servers), with the marks hook in every process it starts."""
    out_dir = workdir / "latency"
    marks = workdir / "daemon-marks"
    env = timeline_env(dict(os.environ), marks)
    cmd = [sys.executable, "-m", "benchmarks.latency", "--samples", str(samples), "--out-dir", str(out_dir)]
    cmd += ["--localstack-python", localstack_python, "--seed", "18"]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)
    (path,) = out_dir.glob("latency-*.json")
    payload = json.loads(path.read_text())
    runs = [summary(m) for m in run_process_marks(marks)]
    return {"latency": payload, "daemon_launched_runs": runs}


def compose_engine() -> str | None:
    """Why a private Docker engine cannot be run here for compose-check.sh, or None when it can."""
    missing = [tool for tool in ("dockerd", "docker", "docker-compose", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"not on PATH: {', '.join(missing)} (apt-get install -y docker.io docker-compose debootstrap)"
    return None if os.geteuid() == 0 else "needs root (a private dockerd, debootstrap)"


def compose_latency(samples: int, workdir: Path) -> dict[str, Any]:
    """deploy/standins/compose-check.sh up to its latency step (COMPOSE_CHECK_LATENCY_ONLY): its JSON."""
    out = workdir / "compose-latency.json"
    env = dict(os.environ, COMPOSE_CHECK_LATENCY_ONLY="1", COMPOSE_CHECK_LATENCY_SAMPLES=str(samples))
    env["COMPOSE_CHECK_LATENCY_JSON"] = str(out)
    began = time.monotonic()
    check = subprocess.Popen([str(ROOT / "deploy" / "standins" / "compose-check.sh")], env=env, cwd=ROOT)
    try:
        code = check.wait()
    except KeyboardInterrupt:  # its EXIT trap stops the containers and its dockerd, by PID
        check.send_signal(signal.SIGTERM)
        check.wait(timeout=180)
        raise
    if code:
        raise RuntimeError(f"deploy/standins/compose-check.sh exited {code}")
    payload = json.loads(out.read_text())
    payload["compose_check_seconds"] = round(time.monotonic() - began, 1)
    return payload


def on_servers(
    args: argparse.Namespace, parts: set[str], python: str, workdir: Path, loads: dict[str, Any]
) -> tuple[list[Measurement], list[dict[str, Any]], dict[str, Any]]:
    """The throughput and timeline parts, on the suite's own LocalStack and embedded PostgreSQL."""
    quick = args.quick
    n_loop = args.loopback_n or (500 if quick else 10_000)
    n_delay = args.delayed_n or (1_000 if quick else 20_000)
    settings = [(0.0, n_loop), (args.delay_ms, n_delay)] if args.delay_ms else [(0.0, n_loop)]
    threads, _ = pipeline_receive_parallelism()
    results: list[Measurement] = []
    timelines: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pg = EmbeddedPostgres(workdir / "pg")
        stack.callback(pg.stop)
        pg_url = pg.start()
        localstack = LocalStackServer(python, workdir / "localstack", gateway="twisted")
        stack.callback(localstack.stop)
        localstack.start()
        relay = stack.enter_context(RelayProcess(localstack.port, args.delay_ms / 1000)) if args.delay_ms else None
        bench = Bench(localstack, pg_url, relay, workdir, 10_000)
        print("warm-up (not measured): one in-process run and one process run of 50", flush=True)
        for kind in ("fetch-etl", "fetch-etl process"):
            consume(bench, kind, generate_bodies(50, seed=1), 0.0, threads, workdir)
        for delay, n in settings if "throughput" in parts else []:
            bodies = generate_bodies(n, seed=n)
            for kind in KINDS:
                results.append(consume(bench, kind, bodies, delay, threads, workdir))
            loads[f"after +{delay:g} ms"] = load_average()
        print(
            f"start-up timeline: {args.timeline_runs} runs of 10 messages, run size 10,000, loopback",
            flush=True,
        )
        for i in range(args.timeline_runs if "timeline" in parts else 0):
            # the default run size, so the run ends as a sensor's does: at the empty poll after its messages
            bodies = generate_bodies(10, seed=100 + i)
            m = consume(bench, "fetch-etl process", bodies, 0.0, threads, workdir, run_size=10_000)
            timelines.append(m.extra)
        with psycopg.connect(pg_url) as conn:
            postgres_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        machine = report.machine(python, localstack_version(python), postgres_version)
    loads["after throughput"] = load_average()
    return results, timelines, machine


def run(args: argparse.Namespace, workdir: Path) -> int:
    quick = args.quick
    samples = args.latency_samples if args.latency_samples is not None else (2 if quick else 5)
    parts = set(args.parts.split(","))
    servers = bool(parts & {"throughput", "timeline"})
    python = ensure_localstack_python(args.localstack_python) if servers or "latency" in parts else ""
    bytecode = {"compiled": [], "note": "--source: left as found"} if args.source else compile_bytecode()
    started_at = datetime.now(UTC)
    loads = {"start": load_average()}
    results: list[Measurement] = []
    timelines: list[dict[str, Any]] = []
    if servers:
        results, timelines, machine = on_servers(args, parts, python, workdir, loads)
    else:
        machine = {**report.machine(sys.executable, "not used", "not used"), "python_localstack": "not used"}
    daemon: dict[str, Any] = {}
    if samples and "latency" in parts:
        print(f"latency: {samples} samples through dagster-daemon + code server", flush=True)
        daemon = latency(samples, python, workdir)
        loads["after latency"] = load_average()
    compose: dict[str, Any] | None = None
    if samples and "compose-latency" in parts:
        if why := compose_engine():
            print(f"compose-latency: skipped, no Docker engine can be run here: {why}", flush=True)
            compose = {"skipped": why}
        else:
            print(f"compose-latency: {samples} samples in the Compose deployment (compose-check.sh)", flush=True)
            compose = compose_latency(samples, workdir)
            loads["after compose-latency"] = load_average()
    help_times = fetch_etl_help()
    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.suite " + " ".join(sys.argv[1:]),
        "quick": quick,
        "machine": machine,
        "load_average": loads,
        "code": _code_state(),
        "bytecode": bytecode,
        "setup": {
            "queue": "LocalStack SQS (host mode, twisted gateway, 127.0.0.1 only), JSON protocol",
            "database": "embedded PostgreSQL (fsync=off, synchronous_commit=off), 127.0.0.1",
            "delay_ms": args.delay_ms,
            "receive_threads": pipeline_receive_parallelism()[0],
            "process_run": "dagster asset materialize -m fetch_etl.definitions --select '*' (venv binary, not "
            "through `uv run`), SQS_MAX_MESSAGES_PER_RUN=N, one DAGSTER_HOME kept across runs (sqlite, as "
            "`fetch-etl dev` writes it), clocked spawn -> exit",
            "in_process_run": "dagster.materialize of the three assets in the benchmark's process, one run per drain",
            "cpu": "user+sys seconds of the run process after its first ReceiveMessage (os.times at exit minus at "
            "the first call: Dagster's work, the checks and teardown included, start-up excluded) / the "
            "seed-style consumer's own, on the same kind of queue",
        },
        "measurements": [report.measurement_dict(m) for m in results],
        "timeline_runs": timelines,
        "latency": daemon.get("latency"),
        "compose_latency": compose,
        "daemon_launched_runs": daemon.get("daemon_launched_runs"),
        "fetch_etl_help": help_times,
        "operator_command_imports": operator_imports(),
    }
    payload["goals"] = suite_report.goals(payload)
    suite_report.print_summary(payload)
    date = started_at.strftime("%Y-%m-%d")
    stem = "suite-quick" if quick else f"suite-{date}"
    report.write_json(args.out_dir / f"{stem}.json", payload)
    if compose and "samples" in compose:
        report.write_json(args.out_dir / f"compose-latency-{'quick' if quick else date}.json", compose)
    suite_report.write_chart(args.out_dir / f"{'suite-quick' if quick else 'suite'}.png", payload)
    print(f"wrote {args.out_dir}/{stem}.json and the chart")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 latency samples: a smoke check")
    parser.add_argument("--loopback-n", type=int, default=None, help="messages on loopback (default 10000)")
    parser.add_argument("--delayed-n", type=int, default=None, help="messages with the delay (default 20000)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added per queue request (0: loopback only)")
    parser.add_argument("--timeline-runs", type=int, default=3, help="small process runs for the fixed cost")
    parser.add_argument("--latency-samples", type=int, default=None, help="default 5, each latency part (0 skips both)")
    parser.add_argument("--localstack-python", default=None, help="interpreter with localstack-core installed")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--source", action="store_true", help="do not byte-compile the venv first (start-up as on a first import)"
    )
    parser.add_argument(
        "--parts",
        default="throughput,timeline,latency,compose-latency",
        help="which parts to run (default all; compose-latency is skipped where no Docker engine can be run)",
    )
    args = parser.parse_args(argv)
    return report.run_in_scratch_dir(run, args, "suite-", ROOT / ".fetch_etl")


if __name__ == "__main__":
    sys.exit(main())
