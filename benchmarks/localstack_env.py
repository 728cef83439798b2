"""LocalStack's SQS in host mode (no Docker), in its own Python >= 3.12 venv, bound to 127.0.0.1 only.

`localstack-core` uses Python 3.12 syntax, so it cannot live in the project's 3.11 environment: the harness
finds `.fetch_etl/localstack-venv` or builds it with uv from a pyenv/system Python 3.12+ interpreter.
`--localstack-python PATH` names an interpreter that already has `localstack-core[runtime]` installed.

Gateways: "twisted" (LocalStack's default, the faster one) ignores GATEWAY_LISTEN's host and binds 0.0.0.0,
so it is started through `localstack_launch.py`, which forces its listeners onto 127.0.0.1; "hypercorn"
honours GATEWAY_LISTEN and runs LocalStack's entry point directly. Either way `start()` checks every
listening socket of the process tree and refuses (stops LocalStack, raises) unless all are on loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Literal, Self

import psutil

# service-identity: twisted's TLS extra, which the twisted gateway imports but localstack-core does not declare;
# installed in one resolve with the rest so it cannot drag cryptography past what pyopenssl<26 supports
LOCALSTACK_REQUIREMENTS = (
    "localstack-core[runtime]==2026.3.0",
    "cbor2<6",
    "pyopenssl<26",
    "service-identity>=24.1",
)
DEFAULT_VENV = Path(".fetch_etl/localstack-venv")
LAUNCHER = Path(__file__).resolve().with_name("localstack_launch.py")
Gateway = Literal["twisted", "hypercorn"]
GATEWAYS: tuple[Gateway, ...] = ("twisted", "hypercorn")
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
    probe = [str(python), "-c", "import localstack.runtime.main, twisted.internet.endpoints"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python.absolute())
    if python.exists():
        print(f"completing LocalStack's venv in {venv} (twisted gateway needs service-identity)", flush=True)
    else:
        print(f"building LocalStack's venv in {venv} (once; about a minute)", flush=True)
        subprocess.run(["uv", "venv", "--quiet", "--python", _base_interpreter(), str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(python), *LOCALSTACK_REQUIREMENTS], check=True)
    return str(python.absolute())


def localstack_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('localstack-core'))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _free_port() -> int:
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


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def listening_sockets(pid: int) -> list[tuple[int, str, int]]:
    """(pid, host, port) of every listening TCP socket and bound UDP socket of pid and its descendants."""
    found: list[tuple[int, str, int]] = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            for conn in proc.net_connections(kind="inet"):
                udp_bound = conn.type == socket.SOCK_DGRAM and conn.laddr and not conn.raddr
                if conn.laddr and (conn.status == psutil.CONN_LISTEN or udp_bound):
                    found.append((proc.pid, conn.laddr.ip, conn.laddr.port))
    return found


class LocalStackServer:
    """LocalStack's runtime with SQS only, its gateway on 127.0.0.1 only (checked after start), no persistence."""

    def __init__(self, python: str, root: Path, port: int | None = None, gateway: Gateway = "twisted") -> None:
        if gateway not in GATEWAYS:
            raise ValueError(f"gateway must be one of {GATEWAYS}, not {gateway!r}")
        self.python = python
        self.root = root.resolve()
        self.port = port or _free_port()
        self.gateway = gateway
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
            "GATEWAY_SERVER": self.gateway,
            "LOCALSTACK_LAUNCH_BIND": "127.0.0.1",  # read by localstack_launch.py (twisted)
            "FILESYSTEM_ROOT": str(self.root / "fs"),
            # no traffic off the machine: no certificate download, no analytics, no infra downloads
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "SKIP_INFRA_DOWNLOADS": "1",
        }
        # twisted ignores GATEWAY_LISTEN's host: the launcher rebinds its listeners to 127.0.0.1
        command = [str(LAUNCHER)] if self.gateway == "twisted" else ["-m", "localstack.runtime.main"]
        log = (self.root / "localstack.log").open("ab")
        self.proc = subprocess.Popen(
            [self.python, *command],
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
                        self._check_loopback_only()
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LocalStackUnavailable(f"LocalStack did not become healthy on {self.endpoint}; see {self.root}")

    def _check_loopback_only(self) -> None:
        """Stop LocalStack and raise unless every socket it listens on is on loopback (and the gateway is)."""
        assert self.proc is not None
        try:
            sockets = listening_sockets(self.proc.pid)
        except (psutil.Error, OSError) as exc:
            self.stop()
            raise LocalStackUnavailable(f"could not list LocalStack's listening sockets: {exc}") from exc
        exposed = [s for s in sockets if not _is_loopback(s[1])]
        gateway_seen = any(port == self.port for _, _, port in sockets)
        if exposed or not gateway_seen:
            self.stop()
            what = f"listens beyond loopback: {exposed}" if exposed else f"no listener found on port {self.port}"
            raise LocalStackUnavailable(f"LocalStack ({self.gateway}) {what}; stopped it. See {self.root}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_pid(proc.pid)
            proc.poll()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
