"""Writing a finished run into the catalog directory: the stages' parts, composed into one catalog.

Everything is written first under CATALOG/.staging/ and then moved into place (tables one rename
each, the array store one exchange, the manifest last), so a write that fails (a full disk) leaves
the catalog as it was, and a reader never sees a half-written file.
"""

from __future__ import annotations

import platform
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import catalog_schema as cs
from catalog_schema import ArrayKind
from catalog_schema.layout import STAGING
from catalog_schema.storage import copy_array, publish, write_array, write_manifest, write_table
from pipeline.plan import RunPlan
from pipeline.stages import STAGES


@dataclass
class Draft:
    """The catalog being written under .staging: each stage adds its tables, arrays, units columns and
    manifest sections; the units table and the manifest are written once every stage has added its part."""

    root: Path
    units: dict[str, Any]  # the units table's columns
    manifest: dict[str, Any]

    def table(self, name: str, columns: dict[str, Any] | pa.Table) -> None:
        write_table(self.root, name, columns if isinstance(columns, pa.Table) else cs.to_table(name, columns))

    def array(self, kind: ArrayKind, layer: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        write_array(self.root, kind, layer, data, attrs)

    def copy_array(self, source: Path, kind: ArrayKind, layer: str) -> None:
        """An array of a previous catalog, as it is (a result reused by re-analysis)."""
        copy_array(source, self.root, kind, layer)


def write_catalog(plan: RunPlan, results: dict[str, Any], times: dict[str, Any], run_id: str,
                  reuse_record: dict | None = None) -> dict[str, Any]:
    """The whole catalog, written under CATALOG/.staging and then moved into place (see the module doc); tables
    and arrays of stages or layers not in this run do not survive it. `results`: each stage's result."""
    staging = plan.catalog / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that failed while writing
    staging.mkdir(parents=True)
    try:
        draft = Draft(staging, {}, _manifest(plan, times, run_id, reuse_record))
        for name in plan.stages:
            STAGES[name].write(draft, plan, results[name])
        draft.table("units", draft.units)
        write_manifest(staging, draft.manifest)
        publish(staging, plan.catalog)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return draft.manifest


def _manifest(plan: RunPlan, times: dict[str, Any], run_id: str, reuse_record: dict | None) -> dict[str, Any]:
    """The sections every catalog has; the stages add theirs (layers, data, summary come with the activations)."""
    return {
        "schema_version": cs.SCHEMA_VERSION,
        "run_id": run_id,
        **times,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "job": plan.job.to_dict(),
        "job_file": str(plan.job.path),
        "fingerprints": plan.fingerprints,
        "stages_done": list(plan.stages),
        "model": {"kind": plan.recipe.kind, "name": plan.recipe.name, "input_size": plan.prep.input_size,
                  "channels": plan.prep.channels},
        "settings": {"preprocess": asdict(plan.prep)},
        "prepared": plan.prepared,
        "errors": [],
        "reuse": reuse_record or {"previous": None, "previous_run_id": None, "stages": {}},
    }
