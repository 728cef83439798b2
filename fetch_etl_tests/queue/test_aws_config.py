"""The SQS resource's boto3 fields are dagster-aws's, and the run path never imports dagster-aws."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fetch_etl.queue.aws_config import Boto3Configuration
from fetch_etl.queue.resource import SqsResource


def test_our_boto3_fields_equal_dagster_aws_ones() -> None:
    """Names, types, defaults and descriptions, so config written for dagster-aws resources fits ours."""
    from dagster_aws.utils import ResourceWithBoto3Configuration

    def fields(model: type) -> dict[str, tuple[object, object, object]]:
        return {name: (f.annotation, f.default, f.description) for name, f in model.model_fields.items()}

    theirs = fields(ResourceWithBoto3Configuration)
    assert fields(Boto3Configuration) == theirs
    assert {name: fields(SqsResource)[name] for name in theirs} == theirs


@pytest.mark.parametrize("module", ["fetch_etl.definitions", "fetch_etl.cli"])
def test_importing_the_run_path_does_not_import_dagster_aws(module: str) -> None:
    code = f"import {module}, sys; print('dagster_aws' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
