"""What a run and the operator commands import before they start work (issue 18): modules, not time.

Loading the definitions (what every run, code server and `dagster asset materialize` does first) leaves out
pandas, which a run imports in the background once it starts receiving, and dagster-aws; `status` and
`reveal` need neither pandas nor the assets. Speed itself is measured in benchmarks/ (suite.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fetch_etl.defs import assets


def _imported(statement: str, names: tuple[str, ...]) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_loading_the_definitions_imports_no_pandas_dagster_aws_or_status() -> None:
    names = ("pandas", "dagster_aws", "fetch_etl.ops.status", "fetch_etl.local.servers", "tabulate")
    assert _imported("from fetch_etl.definitions import defs\ndefs()", names) == []


@pytest.mark.parametrize("module", ["fetch_etl.ops.status", "fetch_etl.ops.pii_admin", "fetch_etl.ops.cli_pii"])
def test_operator_commands_import_no_pandas_or_assets(module: str) -> None:
    assert (
        _imported(f"import {module}", ("pandas", "fetch_etl.defs.assets", "fetch_etl.logins.frame", "dagster_aws"))
        == []
    )


def test_masking_a_batch_imports_pandas_where_it_is_needed() -> None:
    statement = (
        "from fetch_etl.logins import frame as batch\n"
        "from fetch_etl.logins.masking import build_masker\n"
        "from fetch_etl.queue.messages import QueueMessage\n"
        "assert 'pandas' not in sys.modules\n"
        "frame = batch.mask_messages([QueueMessage('m1', 'r', '{}', '0', 1)], build_masker('hmac', b'k' * 32))\n"
        "assert len(frame) == 1"
    )
    assert _imported(statement, ("pandas",)) == ["pandas"]


def test_the_frame_type_accepts_a_dataframe_only() -> None:
    import pandas as pd

    assert assets.MASKED_FRAME.type_check(None, pd.DataFrame()).success  # type: ignore[arg-type]
    assert not assets.MASKED_FRAME.type_check(None, [1, 2]).success  # type: ignore[arg-type]
