"""Throughput benchmark: LocalStack SQS + embedded PostgreSQL on 127.0.0.1, limit vs baseline vs fetch-etl.

    uv run --group bench python -m benchmarks.throughput [--sizes 1000,10000,100000] [--delay-ms 20]
                                                         [--delay-max-n 10000] [--localstack-python PATH]

Every measurement gets a fresh queue pair seeded with N synthetic logins (generate_bodies) and, where it
writes, a fresh database. Each runs on plain loopback and again through a relay on 127.0.0.1 that adds
--delay-ms to every request to the queue (0 skips that pass). Writes benchmarks/results/throughput-<date>.json
and benchmarks/results/throughput.png. Everything started is stopped by PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import report
from benchmarks.consumers import (
    Measurement,
    baseline,
    drain_limit,
    fetch_etl_run,
    load_vs_copy,
    pipeline_receive_parallelism,
    seed,
    sqs_client,
)
from benchmarks.localstack_env import GATEWAYS, LocalStackServer, ensure_localstack_python, localstack_version
from benchmarks.relay import RelayProcess
from benchmarks.scale_out import parallel_runs
from fetch_etl.local.servers import EmbeddedPostgres, create_database, drop_database
from fetch_etl.local.stack import create_queue_pair
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.queue.resource import SqsResource

RESULTS = Path(__file__).parent / "results"
DELAY_METHOD = (
    "delaying TCP relay on 127.0.0.1 in its own process (benchmarks/relay.py): each client->queue chunk is "
    "forwarded +delay after it arrived; netem in a network namespace was not used"
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated N (default 1000,10000)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added per queue request; 0 = loopback only")
    parser.add_argument(
        "--delay-max-n", type=int, default=None, help="run the delayed pass only for N up to this (default: all)"
    )
    parser.add_argument("--localstack-python", default=None, help="interpreter with localstack-core installed")
    parser.add_argument("--gateway", choices=GATEWAYS, default="twisted", help="LocalStack's HTTP server")
    parser.add_argument("--kinds", default="limit,baseline,fetch-etl", help="which consumers to measure")
    parser.add_argument(
        "--run-size",
        type=int,
        default=SqsResource.model_fields["max_messages_per_run"].default,
        help="fetch-etl drains N in back-to-back runs of at most this many (default: SQS_MAX_MESSAGES_PER_RUN's)",
    )
    parser.add_argument(
        "--parallel-runs", default="1,2,4", help="k for the scale-out pass: k dagster processes at once ('' = skip)"
    )
    parser.add_argument("--parallel-n", type=int, default=10_000, help="N for the scale-out pass (default 10000)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _code_state() -> dict[str, Any]:
    """Which pipeline code was measured: the commit and any uncommitted changes under fetch_etl/."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_in_fetch_etl": git("status", "--short", "fetch_etl").splitlines(),
    }


class Bench:
    def __init__(
        self, localstack: LocalStackServer, pg_url: str, relay: RelayProcess | None, workdir: Path, run_size: int
    ) -> None:
        self.localstack = localstack
        self.pg_url = pg_url
        self.relay = relay
        self.workdir = workdir
        self.run_size = run_size
        self.direct = sqs_client(localstack.endpoint)
        self.counter = 0

    def _queue(self, label: str, bodies: list[str]) -> tuple[Any, float]:
        self.counter += 1
        queues = create_queue_pair(self.direct, f"bench-{self.counter}-{label}", max_receive_count=None)
        seconds = seed(self.localstack.endpoint, queues.queue_url, bodies)
        return queues, seconds

    def _database(self, label: str) -> tuple[str, str]:
        self.counter += 1
        name = f"bench_{self.counter}_{label.replace('-', '_')}"
        return name, create_database(self.pg_url, name)

    def measure(self, kind: str, bodies: list[str], delay: float, threads: int, runs: int = 1) -> Measurement:
        n = len(bodies)
        endpoint = self.relay.endpoint if delay and self.relay else self.localstack.endpoint
        queues, seeded = self._queue(kind, bodies)
        name = url = None
        try:
            if kind == "limit":
                result = drain_limit(endpoint, queues.queue_url, n, threads, delay)
            elif kind == "baseline":
                name, url = self._database(kind)
                result = baseline(endpoint, queues.queue_url, url, n, delay)
            elif kind == "fetch-etl":
                name, url = self._database(kind)
                result = fetch_etl_run(endpoint, self.localstack.endpoint, queues, url, n, delay, self.run_size)
            else:
                name, url = self._database(kind)
                result = parallel_runs(endpoint, self.localstack.endpoint, queues, url, n, runs, delay, self.workdir)
        finally:
            for queue_url in queues:
                with contextlib.suppress(Exception):
                    self.direct.delete_queue(QueueUrl=queue_url)
            if name:
                drop_database(self.pg_url, name)
        result.extra["seed_seconds"] = round(seeded, 2)
        result.extra["loadavg_1m_after"] = round(os.getloadavg()[0], 2)  # other work on the machine shows here
        print(
            f"  {result.what:9} N={n:>7,} delay={delay:g} ms: {result.per_second:8.0f} msg/s ({result.seconds:.2f} s)"
        )
        return result

    def load(self, bodies: list[str]) -> dict[str, Any]:
        name, url = self._database("load")
        try:
            return load_vs_copy(url, bodies)
        finally:
            drop_database(self.pg_url, name)


def run(args: argparse.Namespace, workdir: Path) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    delays = [0.0, args.delay_ms] if args.delay_ms else [0.0]
    threads, threads_source = pipeline_receive_parallelism()
    python = ensure_localstack_python(args.localstack_python)
    started_at = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        pg = EmbeddedPostgres(workdir / "pg")
        stack.callback(pg.stop)
        pg_url = pg.start()
        localstack = LocalStackServer(python, workdir / "localstack", gateway=args.gateway)
        stack.callback(localstack.stop)
        localstack.start()
        print(f"LocalStack on {localstack.endpoint} (pid {localstack.proc.pid if localstack.proc else '?'})")
        relay = None
        if args.delay_ms:
            relay = stack.enter_context(RelayProcess(localstack.port, args.delay_ms / 1000))
        bench = Bench(localstack, pg_url, relay, workdir, args.run_size)
        print("warm-up run (not measured)")
        bench.measure("fetch-etl", generate_bodies(50, seed=1), 0.0, threads)
        results: list[Measurement] = []
        loads: list[dict[str, Any]] = []
        for n in sizes:
            bodies = generate_bodies(n, seed=n)
            loads.append(bench.load(bodies))
            print(
                f"  load N={n:,}: load_run {loads[-1]['load_rows_per_second']:.0f} rows/s, "
                f"raw COPY {loads[-1]['copy_rows_per_second']:.0f} rows/s"
            )
            for delay in delays:
                if delay and args.delay_max_n is not None and n > args.delay_max_n:
                    continue
                for kind in kinds:
                    results.append(bench.measure(kind, bodies, delay, threads))
        parallel = [int(k) for k in args.parallel_runs.split(",") if k.strip()]
        if parallel:
            bodies = generate_bodies(args.parallel_n, seed=args.parallel_n)
            for delay in delays:
                for k in parallel:
                    results.append(bench.measure("parallel", bodies, delay, threads, runs=k))
        with psycopg.connect(pg_url) as conn:
            postgres_version = conn.execute("SHOW server_version").fetchone()[0]
        machine = report.machine(python, localstack_version(python), postgres_version)
    checks = report.targets(results, loads, args.delay_ms)
    report.print_report(results, loads, checks)
    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.throughput " + " ".join(sys.argv[1:]),
        "machine": machine,
        "code": _code_state(),
        "setup": {
            "queue": f"LocalStack SQS (host mode, {args.gateway} gateway, 127.0.0.1 only), JSON protocol",
            "database": "embedded PostgreSQL (fetch_etl.local.servers.EmbeddedPostgres: fsync=off, "
            "synchronous_commit=off), 127.0.0.1",
            "delay_method": DELAY_METHOD if args.delay_ms else None,
            "delay_ms": args.delay_ms,
            "delay_max_n": args.delay_max_n,
            "receive_parallelism": threads,
            "receive_parallelism_source": threads_source,
            "bodies": "fetch_etl.local.synthetic.generate_bodies(N, seed=N): 1% malformed",
            "fetch_etl_resources": f"SqsResource(defaults, protocol=json, max_messages_per_run={args.run_size}), "
            "PiiMaskingResource(hmac), in-process dagster.materialize of the three assets, back-to-back runs until "
            "N are handled",
            "scale_out": f"k `dagster asset materialize -m fetch_etl.definitions --select '*'` processes launched "
            f"together on one queue of N={args.parallel_n:,}, SQS_MAX_MESSAGES_PER_RUN=ceil(N/k), clock from first "
            "launch to last exit (includes Python/Dagster start-up and the asset checks)",
        },
        "measurements": [report.measurement_dict(m) for m in results],
        "load_vs_copy": loads,
        "targets": checks,
    }
    date = started_at.strftime("%Y-%m-%d")
    report.write_json(args.out_dir / f"throughput-{date}.json", payload)
    title = (
        f"fetch-etl throughput, {machine['nproc']} cores ({machine['cpu_model']}), LocalStack {machine['localstack']}"
    )
    report.write_chart(args.out_dir / "throughput.png", results, title)
    print(f"wrote {args.out_dir}/throughput-{date}.json and throughput.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    return report.run_in_scratch_dir(run, args, "bench-")


if __name__ == "__main__":
    sys.exit(main())
