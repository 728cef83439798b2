"""The Dagster UI as a person uses it: the local stack, `dagster dev` on 127.0.0.1, and Debian's Chromium
driven headless by Playwright.

The sensor ticks once when the daemon starts (queue empty: skipped) and then not for ten minutes, so
the messages seeded after that first tick are drained by the "Materialize all" this test clicks, not by a
sensor run racing it. Screenshots go to $FETCH_ETL_ARTIFACTS (default: the test's tmp_path).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.scheduler.instigation import InstigatorType

from fetch_etl.local.stack import LocalStack, make_sqs_client
from fetch_etl.local.synthetic import generate_bodies
from fetch_etl_tests.helpers import fetch_all, processes_mentioning, send

# Playwright is its own dependency group (`browser`), not installed by a plain `uv run`; CI installs it.
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("Playwright is not installed: `uv run --group browser pytest ...`", allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parents[2]
UI_TIMEOUT_MS = 60_000  # generous: on 2 cores the first page load also compiles the code location
RUN_TIMEOUT_MS = 120_000
NODES = ("raw_login_messages", "masked_logins", "user_logins")
CHECKS = (
    "dead_letter_queue_depth",
    "message_id_unique",
    "reject_rate_below_threshold",
    "required_columns_not_null",
    "tokens_well_formed",
)
VALID = 49  # plus one message that is not a login: 2% rejected, under the 5% threshold
PIPELINE_ENV_PREFIXES = ("AWS_", "SQS_", "PII_MASKING_", "DAGSTER_", "LOGIN_QUEUE_", "REJECT_RATE_")


def _require_chromium() -> None:
    """CI always runs this test; elsewhere a machine without Debian's Chromium skips it, saying how to fix that."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI; .ci/run installs it with `apt-get install -y chromium`")
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` to run the browser test")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DagsterUi:
    url: str
    stack: LocalStack
    state_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    path = Path(os.environ.get("FETCH_ETL_ARTIFACTS") or tmp_path / "ui-artifacts").resolve()
    path.mkdir(parents=True, exist_ok=True)
    print(f"browser test artifacts (screenshots, dagster dev log): {path}")
    return path


def _listeners(port: int) -> set[int] | None:
    """PIDs listening on 127.0.0.1:`port`, or None when this user may not see other processes' sockets."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    return {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


def _own_pids(process: subprocess.Popen[bytes]) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))}
    return {process.pid}


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> bool:
    """True once *our* dagster dev serves on `port`; False when it exited or another process holds the port.

    The port was free when picked, but nothing reserved it: another program may have bound it since, and an
    answer on it would then not be ours. So the listening socket must belong to our process group.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        owners = _listeners(port)
        if owners and not owners & _own_pids(process):
            return False
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response,
        ):
            if response.status == 200 and (owners is None or owners & _own_pids(process)):
                return True
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not serve on port {port} within {timeout_s:.0f}s; see {log}")


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to dagster dev's own process group (webserver, daemon, code server, run workers), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group outlived its leader
    process.wait()


@pytest.fixture
def dagster_ui(artifacts: Path) -> Iterator[DagsterUi]:
    """The local stack and `dagster dev` against it; both stopped by PID afterwards, also when the test fails."""
    _require_chromium()
    # Outside pytest's 0700 tmp tree: as root, the embedded PostgreSQL runs as its own user.
    state_dir = Path(tempfile.mkdtemp(prefix="fetch-etl-test-ui-"))
    stack = LocalStack(state_dir=state_dir)
    process: subprocess.Popen[bytes] | None = None
    try:
        stack.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_ENV_PREFIXES) and k != "DATABASE_URL"}
        env.update(stack.env(), LOGIN_QUEUE_SENSOR_INTERVAL="600", DAGSTER_DISABLE_TELEMETRY="1")
        log = artifacts / "dagster-dev.log"
        for _attempt in range(3):  # dagster dev cannot bind port 0 and report it: pick, try, check who got it
            port = _free_port()
            command = [BIN / "dagster", "dev", "-w", PROJECT_ROOT / "workspace.yaml", "-h", "127.0.0.1", "-p", port]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(c) for c in command],
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if _wait_until_serving(port, process, log):
                break
            _stop_process_group(process)
        else:
            pytest.fail(f"dagster dev did not start on a free port in 3 attempts; see {log}")
        url = f"http://127.0.0.1:{port}"
        yield DagsterUi(url, stack, state_dir, process)
    finally:
        if process is not None:
            _stop_process_group(process)
        stack.stop()
        for leftover in processes_mentioning(str(state_dir)):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        shutil.rmtree(state_dir, ignore_errors=True)


def _wait_for_first_sensor_tick(dagster_home: Path, timeout_s: float = 90) -> str:
    """The daemon ticks the sensor as soon as it starts; returns that tick's status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                if state.instigator_name == "login_queue_sensor":
                    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
                    if ticks and ticks[0].end_timestamp:
                        return ticks[0].status.value
        time.sleep(1)
    pytest.fail(f"login_queue_sensor did not tick within {timeout_s:.0f}s of dagster dev starting")


def _dismiss_welcome_dialog(page: Page) -> None:
    """Dagster's community dialog can cover any page on a first visit: skip it whenever it shows up."""
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
    )


def _graph_node_boxes(page: Page) -> dict[str, dict[str, float]]:
    boxes: dict[str, dict[str, float]] = {}
    for name in NODES:
        label = page.locator("svg").get_by_text(name, exact=True)
        expect(label).to_be_visible(timeout=UI_TIMEOUT_MS)
        box = label.bounding_box()
        assert box is not None, name
        boxes[name] = box
    return boxes


def _save_graph(page: Page, path: Path) -> None:
    """Just the three nodes, with a margin: the README's picture of the asset graph."""
    boxes = _graph_node_boxes(page).values()
    left, top = min(b["x"] for b in boxes) - 40, min(b["y"] for b in boxes) - 30
    right = max(b["x"] for b in boxes) + 215
    bottom = max(b["y"] for b in boxes) + 130
    page.screenshot(path=path, clip={"x": left, "y": top, "width": right - left, "height": bottom - top})


def test_the_ui_shows_the_graph_runs_materialize_all_and_the_checks_and_sensor(
    dagster_ui: DagsterUi, artifacts: Path
) -> None:
    started = time.monotonic()
    home = dagster_ui.stack.dagster_home
    assert _wait_for_first_sensor_tick(home) == "SKIPPED", "the queue was empty at the first tick"
    bodies = [*generate_bodies(VALID, seed=77, malformed_rate=0), '{"foo": "oops_wrong_msg_type", "bar": "123"}']
    send(make_sqs_client(dagster_ui.stack.sqs_endpoint), dagster_ui.stack.queue_url, bodies)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 850}, device_scale_factor=2)
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        _dismiss_welcome_dialog(page)
        try:
            # The asset graph: three nodes, laid out left to right in dependency order.
            page.goto(f"{dagster_ui.url}/asset-groups/logins")
            boxes = _graph_node_boxes(page)
            xs = [boxes[name]["x"] for name in NODES]
            assert xs == sorted(xs), f"raw_login_messages -> masked_logins -> user_logins, left to right: {boxes}"
            for kind in ("sqs", "pandas", "Postgres"):
                expect(page.locator("svg").get_by_text(kind, exact=True)).to_be_visible()
            page.screenshot(path=artifacts / "01-asset-graph-before.png")

            # "Materialize all", then follow the launched run until it succeeds.
            page.get_by_role("button", name="Materialize all").click()
            toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
            expect(toast).to_be_visible()
            short_id = re.search(r"[0-9a-f]{8}", toast.inner_text())[0]  # type: ignore[index]
            page.goto(f"{dagster_ui.url}/runs")
            page.get_by_role("link", name=short_id).first.click()
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
            expect(page.get_by_text("5 checks", exact=True).first).to_be_visible()
            page.screenshot(path=artifacts / "02-run-success.png")

            # user_logins: its row count and its checks.
            page.goto(f"{dagster_ui.url}/assets/user_logins")
            status = page.locator("body")
            expect(status).to_contain_text(re.compile(rf"Row count\s*{VALID}(?!\d)"))
            expect(status).to_contain_text(re.compile(rf"Latest check results\s*{len(CHECKS)}(?!\d)"))
            page.screenshot(path=artifacts / "03-user-logins.png")
            page.get_by_text("Checks", exact=True).first.click()
            expect(page.get_by_text(f"Checks ({len(CHECKS)})", exact=True)).to_be_visible()
            for name in CHECKS:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(CHECKS))
            expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
            page.screenshot(path=artifacts / "04-user-logins-checks.png")

            # The sensor: listed under Automation, switched on, and "Running" on its own page.
            page.goto(f"{dagster_ui.url}/automation")
            row_link = page.get_by_role("link", name="login_queue_sensor")
            expect(row_link).to_be_visible()
            expect(page.get_by_role("checkbox").last).to_be_checked()
            row_link.click()
            expect(page.get_by_text("Running", exact=True).first).to_be_visible()
            expect(page.get_by_text("ingest_logins", exact=True).first).to_be_visible()
            page.screenshot(path=artifacts / "05-sensor.png")

            # The picture for the README: the graph after the run, checks passed.
            page.goto(f"{dagster_ui.url}/asset-groups/logins")
            expect(page.locator("svg").get_by_text("5 / 5 Passed")).to_be_visible()
            _save_graph(page, artifacts / "asset-graph.png")
        except Exception:
            page.screenshot(path=artifacts / "failure.png")
            raise
        finally:
            browser.close()

    # What the UI showed is what happened.
    assert fetch_all(dagster_ui.stack.database_url, "SELECT count(*) FROM user_logins")[0][0] == VALID
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records()
    assert [r.dagster_run.status for r in runs] == [DagsterRunStatus.SUCCESS], "one run: ours, not a sensor's"
    assert runs[0].dagster_run.run_id.startswith(short_id)

    # `fetch-etl status` against the same stack sees the daemon ticking the sensor, and the one reject.
    status = subprocess.run(
        [str(BIN / "fetch-etl"), "status", "--local-stack", "--state-dir", str(dagster_ui.state_dir)],
        env={k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_ENV_PREFIXES)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    (artifacts / "fetch-etl-status.txt").write_text(status.stdout + status.stderr)
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(r"\| login_queue_sensor +\| running \(daemon heartbeat", status.stdout), status.stdout
    assert re.search(rf"\| rows in user_logins +\| {VALID} ", status.stdout), status.stdout
    assert "- 1 message waits in the dead-letter queue" in status.stdout
    print(f"browser test took {time.monotonic() - started:.1f}s after dagster dev was serving")
