"""`fetch-etl --help` loads only click, tabulate and light modules: Dagster, pandas and boto3 take seconds."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("dagster", "pandas", "boto3", "botocore")
# As the console script does: import the CLI, run --help (and each command's), then list what got imported.
HELP_THEN_MODULES = f"""
import contextlib, io, json, sys
from fetch_etl.cli import main
for args in (["--help"], *([name, "--help"] for name in main.commands)):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args, prog_name="fetch-etl")
        except SystemExit:
            pass
print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))
"""


def test_help_imports_no_dagster_pandas_or_boto3() -> None:
    out = subprocess.run([sys.executable, "-c", HELP_THEN_MODULES], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
