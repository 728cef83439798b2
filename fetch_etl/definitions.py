"""Dagster's entry point: everything in `fetch_etl.defs`, loaded as dg's defs folder when Dagster asks.

`dagster dev -w workspace.yaml`, `dagster asset materialize -m fetch_etl.definitions`, the image's code
server and `dg check defs` / `dg list defs` (pyproject's `[tool.dg]`) all load this. `defs()` returns the
Definitions. The tree is built from the imported module, not from pyproject.toml, so an installed wheel
(the image) loads the same way as a checkout.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from fetch_etl import defs as defs_folder


@dg.definitions
def defs() -> dg.Definitions:
    tree = dg.ComponentTree.from_module(defs_module=defs_folder, project_root=Path(__file__).resolve().parents[1])
    with warnings.catch_warnings():
        # The folder loader calls Dagster's module loader, marked preview; dg's load_from_defs_folder hides it too.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs()
