"""LocalStack 1.0.4, the SQS of Fetch's 2022 reference image, as a real test server: its venv and its process.

It needs Python 3.10 and 2022 versions of its dependencies (its botocore 1.27 parses requests with a
query-protocol SQS model: a current one would change what the server accepts), so it lives in a venv of its
own, built once with uv from pyenv's 3.10 and cached under ~/.cache/fetch-etl/localstack-1.0.4/<key>, the key
a hash of everything that goes into it. The pins come from ../shared/recipes/compose-in-ci.md; the resolution
is held at EXCLUDE_NEWER, so the packages the recipe leaves unpinned (cryptography with pyopenssl 22 above all)
resolve to what existed then. One patch makes `prepare_installation()` download nothing: at start it would
fetch Java/Kinesis components for every service and die without internet; SQS needs none.

    uv run python -m fetch_etl_tests.localstack_legacy build   # prints the venv's bin/localstack

The tests read that path from FETCH_ETL_LOCALSTACK_LEGACY (or find the cached build). The server runs in
host mode with SQS only, on 127.0.0.1 and a free port, its state under a directory of the caller's, and is
stopped by its PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import psutil
from botocore.config import Config

from fetch_etl.local.servers import _free_port, _stop_pid, _tail
from fetch_etl.queue.query import check_query_client, query_session

VERSION = "1.0.4"
ENV_VAR = "FETCH_ETL_LOCALSTACK_LEGACY"
BASE_PYTHON = Path("~/.pyenv/versions/3.10.13/bin/python").expanduser()
CACHE_ROOT = Path("~/.cache/fetch-etl/localstack-1.0.4").expanduser()
EXCLUDE_NEWER = "2022-10-01T00:00:00Z"  # LocalStack 1.0.4 came out in August 2022
PINS = (
    "localstack==1.0.4",
    "localstack-ext==1.0.4",
    "plux>=1.3.1,<1.4",
    "cachetools~=5.0.0",
    "requests>=2.20,<2.26",
    "semver",
    "stevedore",
    "tailer",
    "apispec",
    "rich",
    "python-dotenv",
    "psutil<6",
    "airspeed==0.5.19",
    "aws-sam-translator<1.60",
    "boto",
    "cbor2",
    "crontab",
    "cryptography",
    "docker==5.0.0",
    "flask==2.1.3",
    "flask-cors>=3.0.3,<3.1",
    "flask-swagger==0.2.12",
    "jsonpatch>=1.24,<2",
    "jsonpath-rw>=1.4,<2",
    "moto-ext[all]==3.1.14",
    "pproxy",
    "pyopenssl>=21,<23",
    "Quart==0.17",
    "readerwriterlock",
    "requests-aws4auth==0.9",
    "Werkzeug==2.1.2",
    "xmltodict",
    "boto3==1.24.59",
    "botocore==1.27.59",
    "hypercorn<0.14",
    "h11<0.15",
    "markupsafe<2.2",
    "jinja2<3.2",
    "itsdangerous<2.2",
)
PATCHED_FILE = "localstack/services/infra.py"
PATCH_OLD = "        # install libs if not present\n        install.install_components(apis)\n"
PATCH_NEW = "        # fetch-etl: download no components (no internet here); SQS needs none\n        return\n"
DONE_MARKER = ".fetch-etl-complete"
BUILD_COMMAND = "uv run python -m fetch_etl_tests.localstack_legacy build"


class LegacyLocalStackError(RuntimeError):
    """LocalStack 1.0.4 could not be built or started; the message says what was tried."""


def cache_key() -> str:
    """Everything that decides the venv's contents, hashed: a changed pin builds a new venv beside the old."""
    facts = [VERSION, str(BASE_PYTHON), EXCLUDE_NEWER, *PINS, PATCH_OLD, PATCH_NEW]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def venv_dir(root: Path = CACHE_ROOT) -> Path:
    return root / cache_key()


def cached_binary(root: Path = CACHE_ROOT) -> Path | None:
    """bin/localstack of a finished build for the current pins, if there is one."""
    venv = venv_dir(root)
    return venv / "bin" / "localstack" if (venv / DONE_MARKER).exists() else None


def configured_binary() -> Path | None:
    """FETCH_ETL_LOCALSTACK_LEGACY if set (it must exist), else the cached build for these pins, else None."""
    if configured := os.environ.get(ENV_VAR):
        path = Path(configured)
        if not path.is_file():
            raise LegacyLocalStackError(f"{ENV_VAR}={configured} does not exist; rebuild it with `{BUILD_COMMAND}`")
        return path
    return cached_binary()


def query_client(endpoint: str, max_attempts: int = 3) -> Any:
    """botocore's query-protocol SQS client (fetch-etl's, with test credentials): LocalStack 1.0.4 speaks no other."""
    client = query_session().client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"}, read_timeout=10),
    )
    return check_query_client(client)


def _patch(venv: Path) -> None:
    """Write the patched file as a new inode: uv hardlinks installed files to its cache, which must stay intact."""
    (target,) = venv.glob(f"lib/python3.*/site-packages/{PATCHED_FILE}")
    text = target.read_text()
    if text.count(PATCH_OLD) != 1:
        raise LegacyLocalStackError(f"{target} does not contain the expected prepare_installation() body once")
    staged = target.with_suffix(".py.fetch-etl")
    staged.write_text(text.replace(PATCH_OLD, PATCH_NEW))
    os.replace(staged, target)


def build(root: Path = CACHE_ROOT) -> Path:
    """The venv's bin/localstack, built now unless a finished build for these pins exists (one builder at a time)."""
    venv = venv_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / DONE_MARKER).exists():
            return venv / "bin" / "localstack"
        uv = shutil.which("uv")
        if uv is None or not BASE_PYTHON.exists():
            raise LegacyLocalStackError(f"building LocalStack {VERSION} needs uv and {BASE_PYTHON}")
        shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
        quiet = ["--quiet", "--no-config"]
        subprocess.run([uv, "venv", *quiet, "--python", str(BASE_PYTHON), str(venv)], check=True, cwd=root)
        python = str(venv / "bin" / "python")
        install = [uv, "pip", "install", *quiet, "--python", python, "--exclude-newer", EXCLUDE_NEWER, *PINS]
        subprocess.run(install, check=True, cwd=root)
        _patch(venv)
        (venv / DONE_MARKER).write_text(f"{VERSION} {cache_key()}\n")
    return venv / "bin" / "localstack"


class LegacyLocalStack:
    """`localstack start --host` with SQS only, on 127.0.0.1 and a free port; state and log under `root`."""

    def __init__(self, binary: Path | str, root: Path) -> None:
        self.binary = Path(binary)
        self.root = root
        self.port = 0
        self.log_file = root / "localstack.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        """A clean environment: nothing of the caller's AWS/SQS settings; home and temp dirs of its own."""
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        return {
            "PATH": f"{self.binary.parent}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root),  # its TMP_FOLDER is $TMPDIR/localstack: one per server, not /tmp's
            "SERVICES": "sqs",
            "EDGE_BIND_HOST": "127.0.0.1",
            "EDGE_PORT": str(self.port),
            "HOSTNAME_EXTERNAL": "127.0.0.1",  # queue URLs name the address it listens on
            "DNS_ADDRESS": "0",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
        }

    def start(self, timeout: float = 60.0, attempts: int = 3) -> Self:
        """Start and wait until it answers SQS; a port taken between choosing and binding gets another try."""
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for _ in range(attempts):
            self.port = _free_port()
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with self.log_file.open("ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.binary), "start", "--host"],
                    cwd=self.root,
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                self.start_seconds = time.monotonic() - started
                return self
            self.stop()
            if "address already in use" not in _tail(self.log_file, offset, lines=200).lower():
                break
        raise LegacyLocalStackError(
            f"LocalStack {VERSION} did not answer SQS on {self.endpoint} within {timeout:.0f}s; "
            f"last log lines:\n{_tail(self.log_file)}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        """Poll an unsigned query-protocol call until it answers 200 from a socket our process owns."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        probe = b"Action=ListQueues&Version=2012-11-05"
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", data=probe, timeout=2) as response:
                    if response.status == 200 and self._owns_port():
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def _owns_port(self) -> bool:
        """The port is ours (not a stranger's that took it first) and nothing listens beyond loopback."""
        assert self.proc is not None
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        listening = [
            conn.laddr
            for proc in procs
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        exposed = [addr for addr in listening if not addr.ip.startswith("127.")]
        if exposed:
            raise LegacyLocalStackError(f"LocalStack {VERSION} listens beyond loopback: {exposed}")
        return any(addr.port == self.port for addr in listening)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_pid(proc.pid, signal.SIGINT, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`build`: build (or find) the venv and print its bin/localstack; `key`: print the cache key."""
    if argv[:1] == ["key"]:
        print(cache_key())
        return 0
    if argv[:1] != ["build"]:
        print("usage: python -m fetch_etl_tests.localstack_legacy build|key", file=sys.stderr)
        return 2
    started = time.monotonic()
    binary = build()
    print(f"LocalStack {VERSION} venv ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    print(binary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
