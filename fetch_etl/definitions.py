"""Dagster's entry point: everything in the `fetch_etl.defs` folder, built when Dagster asks.

`dagster dev -w workspace.yaml`, `dagster asset materialize -m fetch_etl.definitions`, the image's code
server and `dg check defs` / `dg list defs` (pyproject's `[tool.dg]`) all load this. `defs()` returns the
Definitions: every asset, check, job and sensor found in the folder's modules, plus the run resources.
Not dg's ComponentTree: building a component tree imports every installed component library (dagster-aws's
eager package import alone is ~2.3 s) in each run process; the folder holds plain Python modules only.
"""

from __future__ import annotations

import warnings

import dagster as dg

from fetch_etl import defs as defs_folder
from fetch_etl.defs import resources  # the module: a second @definitions at this scope is not allowed


@dg.definitions
def defs() -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # the folder loader is marked preview in 1.13
        found = dg.load_definitions_from_package_module(defs_folder)
    return dg.Definitions.merge(found, resources.run_resources())
