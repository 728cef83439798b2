"""Marks for the start-up timeline of one run, in whatever Python process starts with this on PYTHONPATH.

Inert unless BENCH_TIMELINE_DIR is set. Then, at exit, the process writes <dir>/<pid>.json with wall-clock
marks (time.time()): when the kernel created the process, when this hook ran (the interpreter is up), when
`dagster`, `pandas`, `boto3`, `psycopg` and `fetch_etl.definitions` began and finished importing, the first
DagsterInstance set-up, every ReceiveMessage call (start, end, messages), and the process's own CPU seconds
(user+sys, all threads) at the first ReceiveMessage and at exit. It imports only the standard library and
patches dagster/botocore only after they were imported, so the process does what it would do without it
(plus a few microseconds per watched import and per SQS call). Used by benchmarks/suite.py; see
docs/performance.md.
"""

from __future__ import annotations

import os

if os.environ.get("BENCH_TIMELINE_DIR"):
    import atexit
    import importlib.abc
    import json
    import sys
    import threading
    import time
    from typing import Any

    _MARKS: dict[str, Any] = {"pid": os.getpid(), "hook_at": time.time(), "receives": []}
    _LOCK = threading.Lock()
    _WATCHED = ("dagster", "dagster._cli", "pandas", "boto3", "psycopg", "fetch_etl.definitions")

    def _created_at() -> float | None:
        """The process's start time from /proc (clock ticks since boot + boot time), 10 ms resolution."""
        try:
            with open(f"/proc/{os.getpid()}/stat") as stat:
                ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as boot:
                btime = next(int(line.split()[1]) for line in boot if line.startswith("btime"))
            return btime + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, StopIteration):
            return None

    _MARKS["process_created_at"] = _created_at()

    def _cpu() -> float:
        times = os.times()
        return times.user + times.system

    def _mark_once(name: str, value: Any) -> None:
        with _LOCK:
            _MARKS.setdefault(name, value)

    def _patch_botocore(module: Any) -> None:
        original = module.BaseClient._make_api_call

        def _make_api_call(self: Any, operation_name: str, api_params: Any) -> Any:
            if operation_name != "ReceiveMessage":
                return original(self, operation_name, api_params)
            started = time.time()
            if "first_receive_at" not in _MARKS:
                _mark_once("cpu_at_first_receive", _cpu())
                _mark_once("first_receive_at", started)
            response = original(self, operation_name, api_params)
            with _LOCK:
                _MARKS["receives"].append((started, time.time(), len(response.get("Messages") or [])))
            return response

        module.BaseClient._make_api_call = _make_api_call

    def _patch_instance(module: Any) -> None:
        cls = module.DagsterInstance
        for name in ("get", "from_ref"):
            original = cls.__dict__[name].__func__

            def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                started = time.time()
                result = _original(*args, **kwargs)
                _mark_once("instance_setup", {"via": _name, "start": started, "end": time.time()})
                return result

            setattr(cls, name, staticmethod(timed))

    _PATCHES = {"botocore.client": _patch_botocore, "dagster._core.instance.instance": _patch_instance}

    class _Loader(importlib.abc.Loader):
        def __init__(self, inner: Any, name: str) -> None:
            self.inner, self.name = inner, name

        def __getattr__(self, attribute: str) -> Any:  # resource readers, get_source, is_package...
            return getattr(self.inner, attribute)

        def create_module(self, spec: Any) -> Any:
            return self.inner.create_module(spec)

        def exec_module(self, module: Any) -> None:
            started, cpu = time.time(), time.thread_time()
            self.inner.exec_module(module)
            if self.name in _WATCHED:  # cpu: of the importing thread (pandas loads on a thread of its own)
                _mark_once(
                    f"import:{self.name}", {"start": started, "end": time.time(), "cpu": time.thread_time() - cpu}
                )
            if self.name in _PATCHES:
                _PATCHES[self.name](module)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name not in _WATCHED and name not in _PATCHES:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _Loader(spec.loader, name)
                    return spec
            return None

    sys.meta_path.insert(0, _Finder())

    def _dump() -> None:
        _MARKS["exit_at"] = time.time()
        _MARKS["cpu_at_exit"] = _cpu()
        _MARKS["argv"] = list(sys.argv)
        path = os.path.join(os.environ["BENCH_TIMELINE_DIR"], f"{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump(_MARKS, out)

    atexit.register(_dump)
