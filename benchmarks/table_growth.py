"""Per-run database cost as user_logins grows: embedded PostgreSQL on 127.0.0.1, no queue, no Dagster.

    uv run python -m benchmarks.table_growth [--sizes 0,1000000,5000000] [--batch 10000] [--reps 3]
                                             [--slow-seconds 20] [--out-dir benchmarks/results]

One database is grown through --sizes (server-side INSERT ... SELECT of one masked synthetic frame with
fresh MessageIds, loaded_at one minute per --batch rows, 1% as many rows in user_logins_rejected, then
VACUUM ANALYZE). At each size every database call of a sensor-driven run is timed --reps times (median):
load_run of a fresh batch, the reads of the `user_logins` asset and the SQL of the asset checks. Checks
that read only Dagster metadata or the DLQ (reject_rate_below_threshold, dead_letter_queue_depth) are
skipped. Writes <out-dir>/table-growth-<date>.json; the server is stopped by PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg

from benchmarks import report
from benchmarks.consumers import BENCH_KEY_HEX
from fetch_etl.defs.checks import accepted_shapes
from fetch_etl.defs.metadata import PREVIEW_COLUMNS
from fetch_etl.local.servers import EmbeddedPostgres, create_database
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl.logins import frame as login_frame
from fetch_etl.logins.resource import PiiMaskingResource
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.warehouse import probes
from fetch_etl.warehouse.load import LOGIN_COLUMNS, check_mask_key, load_run, migrate, table_row_count

RESULTS = Path(__file__).parent / "results"
SEED_ROWS = 50_000  # one masked frame, re-inserted with fresh MessageIds until the table has M rows
ASSET_READS = ("table_row_count", "probes.table_columns", "probes.newest_rows", "probes.rejects_by_reason")
# In an ingest run the table checks read that run's load only (checks.run_scope); on their own, the table.
CHECKS = ("check:required_columns_not_null", "check:message_id_unique", "check:tokens_well_formed")
WHOLE_TABLE_CHECKS = tuple(name.replace("check:", "check (whole table):") for name in CHECKS)
FIXED = ("migrate", "check_mask_key")
PLANS = {
    "table_row_count": "SELECT count(*) FROM user_logins",
    "probes.newest_rows": "SELECT user_id FROM user_logins WHERE message_id IS NOT NULL "
    "AND loaded_at IS NOT NULL ORDER BY loaded_at DESC, message_id LIMIT 5",
    "check:message_id_unique": "SELECT message_id, count(*) FROM user_logins WHERE message_id IS NOT NULL "
    "GROUP BY message_id HAVING count(*) > 1",
}


def masked_frames(count: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(loadable, rejected) of `count` synthetic messages masked with the benchmark's hmac key."""
    now_ms = str(int(time.time() * 1000))
    messages = [QueueMessage(str(uuid.uuid4()), "r", b, now_ms, 1) for b in generate_bodies(count, seed=seed)]
    frame = login_frame.mask_messages(messages, PiiMaskingResource(key=BENCH_KEY_HEX, mode="hmac").masker())
    return login_frame.loadable(frame), login_frame.rejected(frame)


def fresh_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(message_id=[str(uuid.uuid4()) for _ in range(len(frame))])


def stage_seed(conn: psycopg.Connection, logins: pd.DataFrame, rejects: pd.DataFrame) -> None:
    """The seed frame in two unlogged tables, numbered 0..n-1 so INSERT ... SELECT can take a prefix."""
    columns = [c for c in LOGIN_COLUMNS if c != "message_id"]
    conn.execute(f"CREATE UNLOGGED TABLE bench_seed AS SELECT 0 AS i, {', '.join(columns)} FROM user_logins LIMIT 0")
    conn.execute("CREATE UNLOGGED TABLE bench_rejects AS SELECT reason_code, reason FROM user_logins_rejected LIMIT 0")
    with conn.cursor() as cur:
        with cur.copy(f"COPY bench_seed (i, {', '.join(columns)}) FROM STDIN") as copy:
            for i, row in enumerate(logins[columns].astype(object).itertuples(index=False)):
                copy.write_row((i, *(None if pd.isna(v) else v for v in row)))
        with cur.copy("COPY bench_rejects (reason_code, reason) FROM STDIN") as copy:
            for row in rejects[["reason_code", "reason"]].itertuples(index=False):
                copy.write_row(tuple(row))


def prefill(conn: psycopg.Connection, rows: int, offset: int, batch_rows: int, t0: datetime) -> float:
    """Append `rows` synthetic rows after `offset` earlier ones (and 1% rejects); returns seconds."""
    started = time.perf_counter()
    seed_n = int(conn.execute("SELECT count(*) FROM bench_seed").fetchone()[0])  # type: ignore[index]
    columns = [c for c in LOGIN_COLUMNS if c not in ("message_id", "create_date")]
    stamp = "%(t0)s + make_interval(mins => ((%(at)s + s.i) / %(batch)s)::int)"
    done = 0
    while done < rows:
        take = min(seed_n, rows - done)
        conn.execute(
            f"INSERT INTO user_logins (message_id, {', '.join(columns)}, create_date, loaded_at) "
            f"SELECT gen_random_uuid()::text, {', '.join(columns)}, ({stamp})::date, {stamp} "
            "FROM bench_seed s WHERE s.i < %(take)s ORDER BY s.i",
            {"t0": t0, "at": offset + done, "batch": batch_rows, "take": take},
        )
        done += take
        if done % 1_000_000 < take:
            print(f"    prefilled {offset + done:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    conn.execute(
        "INSERT INTO user_logins_rejected (message_id, reason_code, reason, received_at) "
        "SELECT gen_random_uuid()::text, r.reason_code, r.reason, %s FROM generate_series(0, %s / 100) g "
        "CROSS JOIN bench_rejects r LIMIT %s",
        (t0, rows, rows // 100),
    )
    conn.execute("VACUUM (ANALYZE) user_logins")
    conn.execute("VACUUM (ANALYZE) user_logins_rejected")
    return time.perf_counter() - started


def operations(conn: psycopg.Connection, key_id: str, last: list[Any]) -> dict[str, Callable[[], object]]:
    """Every database call of one run after the load, as the asset and the checks make them; `last[0]` is
    the latest load's loaded_at (what the checks of an ingest run scope to)."""
    shapes = {mode: shape.sql() for mode, shape in accepted_shapes().items()}
    ok = partial(probes.loaded_by_fetch_etl, conn)  # every check first asks whether the table is ours
    return {
        "migrate": lambda: migrate(conn),
        "check_mask_key": lambda: check_mask_key(conn, key_id, "hmac"),
        "table_row_count": lambda: table_row_count(conn),
        "probes.table_columns": lambda: probes.table_columns(conn),
        "probes.newest_rows": lambda: probes.newest_rows(conn, PREVIEW_COLUMNS),
        "probes.rejects_by_reason": lambda: probes.rejects_by_reason(conn),
        "check:required_columns_not_null": lambda: (ok(), probes.null_counts(conn, last[0])),
        "check:message_id_unique": lambda: (ok(), probes.duplicate_message_ids(conn, loaded_at=last[0])),
        "check:tokens_well_formed": lambda: (ok(), probes.token_shape_counts(conn, shapes, last[0])),
        "check (whole table):required_columns_not_null": lambda: (ok(), probes.null_counts(conn)),
        "check (whole table):message_id_unique": lambda: (ok(), probes.duplicate_message_ids(conn)),
        "check (whole table):tokens_well_formed": lambda: (ok(), probes.token_shape_counts(conn, shapes)),
    }


def plan(conn: psycopg.Connection, query: str) -> str:
    """The query's plan on one line (seq scan vs index-only scan vs sort)."""
    return " | ".join(str(row[0]).strip() for row in conn.execute(f"EXPLAIN (COSTS OFF) {query}"))


def measure(conn: psycopg.Connection, frames: tuple[pd.DataFrame, pd.DataFrame], key_id: str, args: Any) -> Any:
    """`reps` runs' worth of database calls: load a fresh batch, then every read; all samples kept.

    An operation whose first sample exceeds --slow-seconds is not repeated (median of one), to bound the run.
    """
    samples: dict[str, list[float]] = {}
    last: list[Any] = [None]
    ops = operations(conn, key_id, last)

    def load() -> None:
        last[0] = load_run(conn, fresh_ids(frames[0]), fresh_ids(frames[1])).loaded_at

    for rep in range(args.reps):
        timed: dict[str, Callable[[], object]] = {"load_run": load, **ops}
        for name, call in timed.items():
            if rep and samples[name][0] > args.slow_seconds:
                continue
            started = time.perf_counter()
            call()
            samples.setdefault(name, []).append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    medians["sum: asset reads"] = sum(medians[n] for n in ASSET_READS)
    medians["sum: checks"] = sum(medians[n] for n in CHECKS)
    medians["per-run read cost"] = medians["sum: asset reads"] + medians["sum: checks"]
    medians["checks on their own (whole table)"] = sum(medians[n] for n in WHOLE_TABLE_CHECKS)
    medians["per-run DB total"] = medians["per-run read cost"] + medians["load_run"] + sum(medians[n] for n in FIXED)
    return {"seconds": medians, "samples": samples}


def machine(conn: psycopg.Connection) -> dict[str, Any]:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    settings = ("server_version", "shared_buffers", "work_mem", "max_parallel_workers_per_gather", "fsync")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.group(1).strip() if cpu else "?",
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "postgres": {s: conn.execute(f"SHOW {s}").fetchone()[0] for s in settings},  # type: ignore[index]
    }


def print_table(results: list[dict[str, Any]]) -> None:
    first, last = results[0], results[-1]
    span = (last["rows"] - first["rows"]) / 1e6
    print(f"\n{'operation (s, median)':34}" + "".join(f"{r['rows'] / 1e6:>10.2f}M" for r in results) + "   per 1M rows")
    for name in first["seconds"]:
        cells = "".join(f"{r['seconds'][name]:>11.4f}" for r in results)
        slope = (last["seconds"][name] - first["seconds"][name]) / span if span else 0.0
        print(f"{name:34}{cells}{slope:>14.4f}")


def run(args: argparse.Namespace, workdir: Path) -> int:
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    started_at = datetime.now(UTC)
    pg = EmbeddedPostgres(workdir / "pg")
    try:
        url = create_database(pg.start(), "table_growth")
        with psycopg.connect(url, autocommit=True, application_name="fetch-etl") as conn:
            migrate(conn)
            print(f"masking a seed frame of {SEED_ROWS:,} and a batch of {args.batch:,} messages")
            seed_logins, seed_rejects = masked_frames(SEED_ROWS, seed=7)
            batch_frames = masked_frames(args.batch, seed=11)
            key_id = str(seed_logins["mask_key_id"].iloc[0])
            check_mask_key(conn, key_id, "hmac")
            stage_seed(conn, seed_logins, seed_rejects)
            t0 = started_at - timedelta(days=400)
            prefilled, results = 0, []
            for size in sizes:
                grow = max(0, size - prefilled)
                print(f"size {size:,}: prefilling {grow:,} rows", flush=True)
                prefill_seconds = prefill(conn, grow, prefilled, args.batch, t0) if grow else 0.0
                prefilled += grow
                rows = table_row_count(conn)
                plans = {name: plan(conn, query) for name, query in PLANS.items()}
                print(f"  {rows:,} rows; measuring {args.reps} runs", flush=True)
                result = measure(conn, batch_frames, key_id, args)
                size_bytes = conn.execute("SELECT pg_total_relation_size('user_logins')").fetchone()[0]  # type: ignore[index]
                after = table_row_count(conn)
                results.append({"size": size, "rows": rows, "rows_after": after, "bytes_with_indexes": size_bytes})
                results[-1].update(prefill_seconds=round(prefill_seconds, 1), plans=plans, **result)
                print(f"  per-run read cost {result['seconds']['per-run read cost']:.3f} s", flush=True)
            described = machine(conn)
    finally:
        pg.stop()
    print_table(results)
    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.table_growth " + " ".join(sys.argv[1:]),
        "machine": described,
        "setup": {
            "description": __doc__.split("\n\n", 2)[2].replace("\n", " ").strip(),
            "seed_rows": SEED_ROWS,
            **{k: v for k, v in vars(args).items() if k != "out_dir"},
        },
        "results": results,
    }
    out = args.out_dir / f"table-growth-{started_at.strftime('%Y-%m-%d')}.json"
    report.write_json(out, payload)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="0,1000000,5000000", help="table sizes in rows, ascending")
    parser.add_argument("--batch", type=int, default=10_000, help="messages per run's batch")
    parser.add_argument("--reps", type=int, default=3, help="runs timed per size (median)")
    parser.add_argument("--slow-seconds", type=float, default=20.0, help="time slower operations once")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    return report.run_in_scratch_dir(run, args, "table-growth-")


if __name__ == "__main__":
    sys.exit(main())
