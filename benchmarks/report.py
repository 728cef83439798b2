"""Results of one benchmark run: the table, the issue's ratio targets, the JSON file and the chart."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from benchmarks.consumers import Measurement

KINDS = ("limit", "baseline", "fetch-etl")


def machine(localstack_python: str, localstack_version: str, postgres_version: str) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ls_py = subprocess.run([localstack_python, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python_project": platform.python_version(),
        "python_localstack": ls_py,
        "localstack": localstack_version,
        "postgres": postgres_version,
    }


def _find(results: Sequence[Measurement], what: str, n: int, delay: float) -> Measurement | None:
    return next((m for m in results if m.what == what and m.n == n and m.delay_ms == delay), None)


def _ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    return a.per_second / b.per_second if a and b and b.per_second else None


def rows(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    out = []
    for n, delay in sorted({(m.n, m.delay_ms) for m in results if "parallel_runs" not in m.extra}):
        limit, base, fetch = (_find(results, kind, n, delay) for kind in KINDS)
        stages = fetch.extra["stages_seconds"] if fetch else {}
        out.append(
            {
                "N": n,
                "delay ms": delay,
                "limit msg/s": round(limit.per_second) if limit else None,
                "baseline msg/s": round(base.per_second) if base else None,
                "fetch-etl msg/s": round(fetch.per_second) if fetch else None,
                "fetch/limit": _fmt(_ratio(fetch, limit)),
                "fetch/baseline": _fmt(_ratio(fetch, base)),
                "receive s": stages.get("receive"),
                "mask s": stages.get("parse_mask"),
                "load+dlq+delete s": stages.get("load_dlq_delete"),
                "start→1st receive s": fetch.extra["start_to_first_receive_seconds"] if fetch else None,
                "peak RSS MB": fetch.extra["peak_rss_mb"] if fetch else None,
            }
        )
    return out


def scale_out_rows(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """One row per parallel-runs measurement: k processes, msg/s, and the gain over one process."""
    out = []
    for m in sorted((m for m in results if "parallel_runs" in m.extra), key=lambda m: (m.n, m.delay_ms, m.what)):
        one = next(
            (o for o in results if o.extra.get("parallel_runs") == 1 and (o.n, o.delay_ms) == (m.n, m.delay_ms)), None
        )
        out.append(
            {
                "N": m.n,
                "delay ms": m.delay_ms,
                "runs": m.extra["parallel_runs"],
                "per run": m.extra["run_size"],
                "msg/s": round(m.per_second),
                "vs 1 run": _fmt(_ratio(m, one)),
                "seconds": round(m.seconds, 1),
                "launch→1st receive s": m.extra["launch_to_first_receive_seconds"],
            }
        )
    return out


def _fmt(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def targets(results: Sequence[Measurement], loads: Sequence[dict[str, Any]], delay: float) -> list[dict[str, Any]]:
    """The issue's ratio targets, each PASS/FAIL with the measured ratio (or n/a when not measured)."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, ok: bool | None) -> None:
        status = "n/a" if value is None else ("PASS" if ok else "FAIL")
        checks.append({"target": name, "value": _fmt(value), "result": status})

    for d in sorted({m.delay_ms for m in results}):
        for n in (10_000, 100_000):
            r = _ratio(_find(results, "fetch-etl", n, d), _find(results, "limit", n, d))
            add(f"fetch-etl >= 80% of limit, N={n:,}, delay {d:g} ms", r, r is not None and r >= 0.8)
        small, large = _find(results, "fetch-etl", 10_000, d), _find(results, "fetch-etl", 100_000, d)
        r = _ratio(large, small)
        add(f"fetch-etl msg/s at 100k within 20% of 10k, delay {d:g} ms", r, r is not None and abs(r - 1) <= 0.2)
        if small and large:
            r = large.extra["peak_rss_mb"] / small.extra["peak_rss_mb"]
            add(f"fetch-etl peak RSS at 100k <= 1.2x at 10k (bounded by the run's batch), delay {d:g} ms", r, r <= 1.2)
    if delay:
        r = _ratio(_find(results, "fetch-etl", 10_000, delay), _find(results, "baseline", 10_000, delay))
        add(f"fetch-etl >= 10x baseline, N=10,000, delay {delay:g} ms", r, r is not None and r >= 10)
    for load in loads:
        r = load["load_rows_per_second"] / load["copy_rows_per_second"]
        add(f"load stage >= 50% of raw COPY rows/s, N={load['n']:,}", r, r >= 0.5)
    return checks


def print_report(results: Sequence[Measurement], loads: Sequence[dict[str, Any]], checks: Sequence[dict]) -> None:
    print(tabulate(rows(results), headers="keys", tablefmt="github"))
    print()
    scale = scale_out_rows(results)
    if scale:
        print(tabulate(scale, headers="keys", tablefmt="github"))
        print()
    print(tabulate(loads, headers="keys", tablefmt="github"))
    print()
    print(tabulate(checks, headers="keys", tablefmt="github"))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def measurement_dict(m: Measurement) -> dict[str, Any]:
    return {
        "what": m.what,
        "n": m.n,
        "delay_ms": m.delay_ms,
        "seconds": round(m.seconds, 3),
        "messages": m.messages,
        "messages_per_second": round(m.per_second, 1),
        **m.extra,
    }


def write_chart(path: Path, results: Sequence[Measurement], title: str) -> bool:
    """Throughput against N (limit/baseline/fetch-etl; solid loopback, dashed delayed) and against parallel runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (run with `uv run --group bench ...`)")
        return False
    colors = {"limit": "tab:gray", "baseline": "tab:red", "fetch-etl": "tab:blue"}
    scale = [m for m in results if "parallel_runs" in m.extra]
    fig, axes = plt.subplots(1, 2 if scale else 1, figsize=(13 if scale else 8, 5), dpi=110, squeeze=False)
    ax = axes[0][0]
    for delay in sorted({m.delay_ms for m in results}):
        for kind in KINDS:
            points = sorted((m.n, m.per_second) for m in results if m.what == kind and m.delay_ms == delay)
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            label = f"{kind}, {'loopback' if not delay else f'+{delay:g} ms per request'}"
            ax.plot(xs, ys, marker="o", color=colors[kind], linestyle="-" if not delay else "--", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("messages in the queue (N)")
    ax.set_ylabel("messages per second")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if scale:
        right = axes[0][1]
        for n, delay in sorted({(m.n, m.delay_ms) for m in scale}):
            points = sorted((m.extra["parallel_runs"], m.per_second) for m in scale if (m.n, m.delay_ms) == (n, delay))
            xs, ys = zip(*points, strict=True)
            label = f"N={n:,}, {'loopback' if not delay else f'+{delay:g} ms'}"
            right.plot(xs, ys, marker="o", linestyle="-" if not delay else "--", label=label)
        right.set_xticks(sorted({m.extra["parallel_runs"] for m in scale}))
        right.set_xlabel("parallel runs (dagster asset materialize processes)")
        right.set_ylabel("messages per second, launch to last exit")
        right.set_ylim(bottom=0)
        right.set_title("scale-out across runs on one queue", fontsize=9)
        right.grid(True, alpha=0.3)
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def run_in_scratch_dir(run: Callable[[Any, Path], int], args: Any, prefix: str, root: Path = Path(".fetch_etl")) -> int:
    """A benchmark's main: `run(args, workdir)` in a fresh scratch dir under `root`, removed afterwards.

    Ctrl-C and SIGTERM raise KeyboardInterrupt, so the `with` blocks of `run` stop every server it started.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()
    began = time.monotonic()
    try:
        return run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"benchmark took {time.monotonic() - began:.0f} s", file=sys.stderr)
