"""LocalStack's SQS in host mode (no Docker), in its own Python >= 3.12 venv, bound to 127.0.0.1 only.

`localstack-core` uses Python 3.12 syntax, so it cannot live in the project's 3.11 environment: the harness
finds `.fetch_etl/localstack-venv` or builds it with uv from a pyenv/system Python 3.12+ interpreter.
`--localstack-python PATH` names an interpreter that already has `localstack-core[runtime]` installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

import psutil

LOCALSTACK_REQUIREMENTS = ("localstack-core[runtime]==2026.3.0", "cbor2<6", "pyopenssl<26")
DEFAULT_VENV = Path(".fetch_etl/localstack-venv")
_CANDIDATES = (
    "~/.pyenv/versions/3.13.0/bin/python3.13",
    "~/.pyenv/versions/3.12.1/bin/python3.12",
    "/usr/bin/python3.13",
    "/usr/bin/python3.12",
)


class LocalStackUnavailable(RuntimeError):
    """LocalStack could not be installed or started; the message says what was tried."""


def _base_interpreter() -> str:
    for candidate in _CANDIDATES:
        path = Path(candidate).expanduser()
        if path.exists():
            return str(path)
    for name in ("python3.13", "python3.12"):
        found = shutil.which(name)
        if found:
            return found
    raise LocalStackUnavailable(
        "LocalStack needs Python >= 3.12 and none was found (tried pyenv 3.13.0/3.12.1, python3.13, python3.12); "
        "pass --localstack-python PATH"
    )


def ensure_localstack_python(override: str | None = None, venv: Path = DEFAULT_VENV) -> str:
    """The interpreter that runs LocalStack: the override, the existing venv, or a venv built now with uv."""
    if override:
        return override
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import localstack.runtime.main"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python.absolute())
    print(f"building LocalStack's venv in {venv} (once; about a minute)", flush=True)
    subprocess.run(["uv", "venv", "--quiet", "--python", _base_interpreter(), str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(python), *LOCALSTACK_REQUIREMENTS], check=True)
    return str(python.absolute())


def localstack_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('localstack-core'))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_pid(pid: int, first: signal.Signals = signal.SIGINT, timeout: float = 10.0) -> None:
    """Stop one process we started and whatever children it left, by PID only."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(first)
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    for leftover in [*alive, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs([*alive, *children], timeout=5)


class LocalStackServer:
    """`python -m localstack.runtime.main` with SQS only, hypercorn on 127.0.0.1, no persistence."""

    def __init__(self, python: str, root: Path, port: int | None = None) -> None:
        self.python = python
        self.root = root.resolve()
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        listen = f"127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SERVICES": "sqs",
            "OVERRIDE_IN_DOCKER": "0",
            "DNS_ADDRESS": "0",
            "SQS_ENDPOINT_STRATEGY": "off",
            "PERSISTENCE": "0",
            "GATEWAY_LISTEN": listen,
            "LOCALSTACK_HOST": listen,
            "GATEWAY_SERVER": "hypercorn",  # the default (twisted) binds 0.0.0.0 whatever GATEWAY_LISTEN says
            "FILESYSTEM_ROOT": str(self.root / "fs"),
            # no traffic off the machine: no certificate download, no analytics, no infra downloads
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "SKIP_INFRA_DOWNLOADS": "1",
        }
        log = (self.root / "localstack.log").open("ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "localstack.runtime.main"],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=1) as response:
                    if json.load(response).get("services", {}).get("sqs") in ("available", "running"):
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LocalStackUnavailable(f"LocalStack did not become healthy on {self.endpoint}; see {self.root}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_pid(proc.pid)
            proc.poll()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
