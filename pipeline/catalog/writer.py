"""Writing a finished run into the catalog directory: the stages' parts, composed into one catalog.

Everything is written first under CATALOG/.staging/ and then moved into place (tables one rename
each, the array store one exchange, the manifest last), so a write that fails (a full disk) leaves
the catalog as it was, and a reader never sees a half-written file.
"""

from __future__ import annotations

import platform
import shutil
import socket
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import catalog_schema as cs
from catalog_schema.layout import STAGING
from catalog_schema.storage import publish, write_manifest
from pipeline.catalog.draft import Draft
from pipeline.plan import RunPlan
from pipeline.stages.protocol import Context, Stage


def write_catalog(plan: RunPlan, stages: Mapping[str, Stage], contexts: Mapping[str, Context], results: dict[str, Any],
                  times: dict[str, Any], run_id: str, reuse_record: dict | None = None) -> dict[str, Any]:
    """The whole catalog, written under CATALOG/.staging and then moved into place (see the module doc); tables
    and arrays of stages or layers not in this run do not survive it. `results`: each of `stages`' result."""
    staging = plan.catalog / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that failed while writing
    staging.mkdir(parents=True)
    try:
        draft = Draft(staging, {}, _manifest(plan, times, run_id, reuse_record))
        for name, stage in stages.items():
            stage.write(draft, contexts[name], results[name]).merge_into(draft.manifest, name)
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
        "layers_left_out": list(plan.left_out),
        "model": {"kind": plan.recipe.kind, "name": plan.recipe.name, "input_size": plan.prep.input_size,
                  "channels": plan.prep.channels},
        "settings": {"preprocess": asdict(plan.prep)},
        "prepared": plan.prepared,
        "errors": [],
        "reuse": reuse_record or {"previous": None, "previous_run_id": None, "stages": {}},
    }
