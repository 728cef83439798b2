"""One whole `dagster asset materialize` process as the user runs it, and the start-up timeline of a run.

`whole_process_run` starts `dagster asset materialize -m fetch_etl.definitions --select '*'` (one run per
drain: SQS_MAX_MESSAGES_PER_RUN = N) with benchmarks/timeline_site on PYTHONPATH, so the process leaves its
marks (timeline_site/sitecustomize.py); `timeline` merges them with the run's Dagster event log into phases
measured from the moment the kernel created the process. The same marks come out of a daemon-launched run
(`dagster api execute_run` started by the code server), see `run_process_marks`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance

from benchmarks.consumers import Measurement
from benchmarks.scale_out import run_env
from fetch_etl.local.stack import DEV_DAGSTER_YAML, QueueUrls

BIN = Path(sys.executable).parent
COMMAND = [str(BIN / "dagster"), "asset", "materialize", "-m", "fetch_etl.definitions", "--select", "*"]
SITE = Path(__file__).resolve().parent / "timeline_site"
ROOT = Path(__file__).resolve().parents[1]


def compile_bytecode() -> dict[str, Any]:
    """Byte-compile the venv's packages and fetch_etl, as a user's environment is after its first import.

    Python writes `__pycache__` on first import and the image compiles at build time, but a venv made with
    `uv sync` starts without it, and with PYTHONDONTWRITEBYTECODE set (this sandbox sets it) every process
    would compile Dagster from source again: 2-4x the start-up a user sees.
    """
    import compileall
    import sysconfig

    started = time.perf_counter()
    dirs = [Path(sysconfig.get_paths()["purelib"]), ROOT / "fetch_etl"]
    ok = all(compileall.compile_dir(d, quiet=1, workers=0) for d in dirs)
    return {
        "compiled": [str(d) for d in dirs],
        "all_compiled": bool(ok),
        "seconds": round(time.perf_counter() - started, 1),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def timeline_env(env: dict[str, str], marks_dir: Path) -> dict[str, str]:
    """`env` plus the marks hook: PYTHONPATH gains timeline_site, BENCH_TIMELINE_DIR names where marks go."""
    marks_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "BENCH_TIMELINE_DIR": str(marks_dir)}


def read_marks(marks_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(marks_dir.glob("*.json"))]


def run_process_marks(marks_dir: Path) -> list[dict[str, Any]]:
    """Marks of the processes that ran the pipeline (they called ReceiveMessage), oldest first."""
    runs = [m for m in read_marks(marks_dir) if m.get("first_receive_at")]
    return sorted(runs, key=lambda m: m["process_created_at"] or m["hook_at"])


def _events(home: Path) -> dict[str, Any]:
    """First timestamp of each event type (steps by key, check evaluations last) of the newest run in `home`."""
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(limit=1)
        out: dict[str, Any] = {"run_id": run.run_id, "status": run.status.value, "steps": {}, "checks_end": None}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            out.setdefault(event.event_type_value, entry.timestamp)
            if event.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS):
                out["steps"].setdefault(entry.step_key, {})[event.event_type_value] = entry.timestamp
            if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                out["checks_end"] = entry.timestamp
        return out


def phases(marks: dict[str, Any], events: dict[str, Any] | None = None, exited_at: float | None = None) -> dict:
    """Consecutive phases of one run process, seconds from process creation (each: start, end, seconds)."""
    t0 = marks.get("process_created_at") or marks["hook_at"]
    imports = marks.get("import:fetch_etl.definitions", {})
    dagster = marks.get("import:dagster") or {}
    dagster_cli = {"start": dagster.get("start"), "end": (marks.get("import:dagster._cli") or dagster).get("end")}
    instance = marks.get("instance_setup") or {}
    receives = marks.get("receives") or []
    empty = [r for r in receives if r[2] == 0]
    last_receive_end = max((r[1] for r in receives), default=None)
    points: list[tuple[str, float | None, float | None]] = [
        ("interpreter start", t0, marks["hook_at"]),
        ("import dagster (and its CLI)", dagster_cli.get("start"), dagster_cli.get("end")),
        ("instance set-up", instance.get("start"), instance.get("end")),
        ("definitions load (import fetch_etl.definitions)", imports.get("start"), imports.get("end")),
    ]
    for module in ("pandas", "boto3", "psycopg"):
        inner = marks.get(f"import:{module}") or {}
        points.append((f"  of which import {module}", inner.get("start"), inner.get("end")))
    ev = events or {}
    steps = ev.get("steps", {})
    raw = steps.get("raw_login_messages", {})
    loaded = steps.get("user_logins", {})
    points += [
        (
            "run set-up (run record, job plan, resources)",
            imports.get("end") or instance.get("end"),
            raw.get("STEP_START"),
        ),
        ("pre-flight (mask key, migrate, SQS client)", raw.get("STEP_START"), marks["first_receive_at"]),
        ("receive (first ReceiveMessage -> last returns)", marks["first_receive_at"], last_receive_end),
        (
            "  of which the empty poll that ends the drain",
            empty[-1][0] if empty else None,
            empty[-1][1] if empty else None,
        ),
        ("mask, load, acknowledge", last_receive_end, loaded.get("STEP_SUCCESS")),
        ("checks", loaded.get("STEP_SUCCESS"), ev.get("checks_end")),
        ("run end -> process exit", ev.get("checks_end") or ev.get("RUN_SUCCESS"), exited_at or marks.get("exit_at")),
    ]
    out = {}
    for name, start, end in points:
        if start is not None and end is not None:
            out[name] = {"start": round(start - t0, 3), "end": round(end - t0, 3), "seconds": round(end - start, 3)}
    return out


def summary(marks: dict[str, Any], events: dict[str, Any] | None = None, exited_at: float | None = None) -> dict:
    t0 = marks.get("process_created_at") or marks["hook_at"]
    received = sum(r[2] for r in marks.get("receives") or [])
    cpu = marks["cpu_at_exit"] - marks["cpu_at_first_receive"]
    pandas = marks.get("import:pandas") or {}
    # pandas is start-up moved behind the first receive (assets.import_pandas_in_background): counted apart
    late_import = pandas.get("cpu", 0.0) if pandas.get("start", 0) >= marks["first_receive_at"] - 1 else 0.0
    work = cpu - late_import
    return {
        "process_start_to_first_receive_seconds": round(marks["first_receive_at"] - t0, 3),
        "received": received,
        "receive_calls": len(marks.get("receives") or []),
        "cpu_seconds_after_first_receive": round(cpu, 3),
        "cpu_seconds_pandas_import_after_first_receive": round(late_import, 3),
        "cpu_seconds_per_1000_messages": round(work / received * 1000, 3) if received else None,
        "cpu_seconds_per_1000_messages_with_pandas_import": round(cpu / received * 1000, 3) if received else None,
        "cpu_seconds_start_up": round(marks["cpu_at_first_receive"], 3),
        "phases": phases(marks, events, exited_at),
    }


def whole_process_run(
    endpoint: str,
    queues: QueueUrls,
    database_url: str,
    n: int,
    delay_ms: float,
    home: Path,
    marks_dir: Path,
    run_size: int | None = None,
) -> Measurement:
    """One `dagster asset materialize` process taking up to n (or run_size) messages, clocked spawn to exit."""
    if not (home / "dagster.yaml").exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(DEV_DAGSTER_YAML)
    for old in marks_dir.glob("*.json"):
        old.unlink()
    env = timeline_env(run_env(endpoint, queues, database_url, run_size or max(n, 1), home), marks_dir)
    started = time.perf_counter()
    spawned_at = time.time()
    proc = subprocess.run(COMMAND, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - started
    exited_at = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"dagster asset materialize failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    (marks,) = run_process_marks(marks_dir)
    events = _events(home)
    info = summary(marks, events, exited_at)
    info["spawn_to_process_created_seconds"] = round((marks["process_created_at"] or spawned_at) - spawned_at, 3)
    info["run_id"] = events["run_id"]
    return Measurement("fetch-etl process", n, delay_ms, seconds, info["received"], info)
