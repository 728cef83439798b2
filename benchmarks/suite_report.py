"""The suite's verdicts on issue 18's goals, its printed summary and its chart (benchmarks/suite.py)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tabulate import tabulate

FIXED_COST_LIMIT = 4.0
HELP_LIMIT = 1.0
LATENCY_LIMIT = 15.0
RATIO_LIMITS = {0.0: 0.5, 20.0: 0.8}
COLORS = {"limit": "tab:gray", "baseline": "tab:red", "fetch-etl": "tab:cyan", "fetch-etl process": "tab:blue"}


def _find(payload: dict[str, Any], what: str, delay: float) -> dict[str, Any] | None:
    return next((m for m in payload["measurements"] if m["what"] == what and m["delay_ms"] == delay), None)


def _verdict(name: str, value: float | None, ok: bool, limit: str) -> dict[str, Any]:
    return {
        "goal": name,
        "value": None if value is None else round(value, 3),
        "limit": limit,
        "result": "n/a" if value is None else ("PASS" if ok else "FAIL"),
    }


def _fixed_costs(payload: dict[str, Any]) -> tuple[float | None, float | None]:
    cli = [t["process_start_to_first_receive_seconds"] for t in payload["timeline_runs"]]
    daemon = [r["process_start_to_first_receive_seconds"] for r in payload.get("daemon_launched_runs") or []]
    return (statistics.median(cli) if cli else None, statistics.median(daemon) if daemon else None)


def goals(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    cli, daemon = _fixed_costs(payload)
    for where, value in (("dagster asset materialize", cli), ("daemon-launched run", daemon)):
        ok = value is not None and value <= FIXED_COST_LIMIT
        out.append(_verdict(f"1. process start -> first ReceiveMessage, {where} (median)", value, ok, "<= 4 s"))
    help_min = payload["fetch_etl_help"]["min"]
    out.append(_verdict("2. fetch-etl --help (min of 5)", help_min, help_min < HELP_LIMIT, "< 1 s"))
    imports = payload["operator_command_imports"]
    heavy = imports["pandas"] or imports["fetch_etl.defs.assets"]
    out.append(_verdict("2. status/reveal modules import pandas or the assets", float(heavy), not heavy, "no"))
    for where, key in (("Compose, .env.example", "compose_latency"), ("daemon + code server", "latency")):
        summary = (payload.get(key) or {}).get("summary", {}).get("enqueue_to_visible")
        value = summary["median"] if summary else None
        ok = bool(value and value <= LATENCY_LIMIT)
        out.append(_verdict(f"3. enqueue -> row visible, {where} (median)", value, ok, "<= 15 s"))
    for delay in sorted({m["delay_ms"] for m in payload["measurements"]}):
        fetch, limit = _find(payload, "fetch-etl process", delay), _find(payload, "limit", delay)
        ratio = fetch["messages_per_second"] / limit["messages_per_second"] if fetch and limit else None
        need = RATIO_LIMITS.get(delay, 0.8)
        n = fetch["n"] if fetch else 0
        out.append(
            _verdict(
                f"4. whole process / bare drain, N={n:,}, +{delay:g} ms",
                ratio,
                bool(ratio and ratio >= need),
                f">= {need}",
            )
        )
        base = _find(payload, "baseline", delay)
        if fetch and base and fetch.get("cpu_seconds_per_1000_messages") and base.get("cpu_seconds_per_1000_messages"):
            r = fetch["cpu_seconds_per_1000_messages"] / base["cpu_seconds_per_1000_messages"]
            out.append(
                _verdict(
                    f"5. CPU per 1,000 msgs, fetch-etl run / seed-style consumer, +{delay:g} ms", r, r <= 1.0, "<= 1"
                )
            )
    return out


def _table(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for delay in sorted({m["delay_ms"] for m in payload["measurements"]}):
        row: dict[str, Any] = {"setting": f"+{delay:g} ms" if delay else "loopback"}
        limit = _find(payload, "limit", delay)
        for kind in COLORS:
            m = _find(payload, kind, delay)
            row["N"] = m["n"] if m else row.get("N")
            row[f"{kind} msg/s"] = round(m["messages_per_second"]) if m else None
            if m and limit and kind != "limit":
                row[f"{kind} /limit"] = round(m["messages_per_second"] / limit["messages_per_second"], 2)
        for kind in ("baseline", "fetch-etl process"):
            m = _find(payload, kind, delay)
            row[f"{kind} CPU s/1k"] = m.get("cpu_seconds_per_1000_messages") if m else None
        rows.append(row)
    return rows


def print_summary(payload: dict[str, Any]) -> None:
    print(tabulate(_table(payload), headers="keys", tablefmt="github"))
    print()
    if payload["timeline_runs"]:
        median = sorted(payload["timeline_runs"], key=lambda t: t["process_start_to_first_receive_seconds"])
        phases = median[len(median) // 2]["phases"]
        print(tabulate([{"phase": k, **v} for k, v in phases.items()], headers="keys", tablefmt="github"))
        print()
    print(tabulate(payload["goals"], headers="keys", tablefmt="github"))
    print("load averages:", {k: v["1m"] for k, v in payload["load_average"].items()})


def write_chart(path: Path, payload: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (run with `uv run --group bench ...`)")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=100)
    ax = axes[0][0]
    delays = sorted({m["delay_ms"] for m in payload["measurements"]})
    width = 0.2
    for i, kind in enumerate(COLORS):
        ys = [(_find(payload, kind, d) or {}).get("messages_per_second", 0) for d in delays]
        ax.bar([x + (i - 1.5) * width for x in range(len(delays))], ys, width, label=kind, color=COLORS[kind])
    ax.set_xticks(range(len(delays)))
    labels = []
    for d in delays:
        m = _find(payload, "limit", d) or {"n": 0}
        labels.append(f"{'loopback' if not d else f'+{d:g} ms per request'}, N={m['n']:,}")
    ax.set_xticklabels(labels)
    ax.set_ylabel("messages per second")
    ax.set_title("throughput, one run per drain (process: spawn -> exit)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    runs = []
    if payload["timeline_runs"]:
        ordered = sorted(payload["timeline_runs"], key=lambda t: t["process_start_to_first_receive_seconds"])
        runs.append(("dagster asset materialize", ordered[len(ordered) // 2]))
    daemon = payload.get("daemon_launched_runs") or []
    if daemon:
        ordered = sorted(daemon, key=lambda t: t["process_start_to_first_receive_seconds"])
        runs.append(("daemon-launched run", ordered[len(ordered) // 2]))
    names: list[str] = []
    for run_label, info in runs:
        for phase, span in info["phases"].items():
            names.append(f"{run_label}: {phase.strip()}")
            ax.barh(
                len(names) - 1,
                span["seconds"],
                left=span["start"],
                color="tab:blue" if "daemon" not in run_label else "tab:orange",
            )
        names.append("")
    ax.axvline(FIXED_COST_LIMIT, color="red", linestyle=":", label="goal 1: first ReceiveMessage <= 4 s")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the process was created")
    ax.set_title("start-up timeline of one run (median of the runs)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1][0]
    compose = (payload.get("compose_latency") or {}).get("samples")
    samples = compose or ((payload.get("latency") or {}).get("samples")) or []
    where = "the Compose deployment" if compose else "dagster-daemon + code server"
    parts = ["wait_for_tick", "tick_to_queued", "dequeue", "launch", "start_to_first_receive", "processing"]
    bottom = [0.0] * len(samples)
    for part in parts:
        ys = [max(0.0, s.get(part) or 0.0) for s in samples]
        ax.bar(range(len(samples)), ys, bottom=bottom, label=part)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.axhline(LATENCY_LIMIT, color="red", linestyle=":", label="goal 3: 15 s")
    ax.set_xlabel("sample")
    ax.set_ylabel("seconds, send -> row visible")
    ax.set_title(f"latency through the sensor ({where})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1][1]
    bars = []
    for d in delays:
        for kind in ("baseline", "fetch-etl process"):
            m = _find(payload, kind, d)
            if m and m.get("cpu_seconds_per_1000_messages") is not None:
                bars.append(
                    (
                        f"{kind}\n{'loopback' if not d else f'+{d:g} ms'}",
                        m["cpu_seconds_per_1000_messages"],
                        COLORS[kind],
                    )
                )
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_ylabel("user+sys CPU seconds per 1,000 messages")
    ax.set_title("CPU per message (start-up excluded)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    machine = payload["machine"]
    loads = ", ".join(f"{k} {v['1m']:.2f}" for k, v in payload["load_average"].items())
    fig.suptitle(
        f"fetch-etl issue 18 suite, {machine['nproc']} cores, LocalStack {machine['localstack']}; load 1m: {loads}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
