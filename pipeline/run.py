"""One cataloging run, from job file to catalog: plan on the driver, distribute, finalize, write."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import runner
from pipeline.catalog_writer import DissectionOutput, crop_requests, projection_requests, write_catalog
from pipeline.config import JobConfig
from pipeline.errors import UserError
from pipeline.plan import RunPlan, check_catalog_target, dissection_config, make_plan
from pipeline.run_lock import catalog_lock
from pipeline.stages import activations, dissection_passes


@dataclass(frozen=True)
class RunResult:
    catalog: Path
    manifest: dict[str, Any]
    shards_computed: int
    shards_reused: int


def run_job(job: JobConfig, *, address: str | None = None, out: Path | None = None,
            stages: tuple[str, ...] | None = None) -> RunResult:
    """Catalog every unit of the job's layers; resumes from shard checkpoints of an interrupted run."""
    catalog = (out or job.output.catalog).resolve()
    check_catalog_target(catalog)
    with catalog_lock(catalog):
        return _run(job, address, out, stages)


def _run(job: JobConfig, address: str | None, out: Path | None, stages: tuple[str, ...] | None) -> RunResult:
    started = _now()
    plan = make_plan(job, out, stages)
    address = address or job.ray.address or os.environ.get("RAY_ADDRESS", "")
    passes = [("activations", plan.shards)]
    if "featvis" in plan.stages:
        passes.append(("featvis", list(plan.featvis_tasks)))
    if "dissection" in plan.stages:
        passes += [("dissection-thresholds", plan.concept_shards), ("dissection-tally", plan.concept_shards)]
    reused = sum((plan.work_dir(name) / f"shard-{s.index:06d}.pkl").exists() for name, shards in passes for s in shards)
    total = sum(len(shards) for _, shards in passes)
    with runner.ray_session(address):
        workers = runner.start_workers(plan)
        partial = runner.run_activations(plan, workers)
        if partial.images == 0:
            raise UserError(f"data.images {plan.images.root}: none of its {len(plan.images.records)} files could be read "
                            f"as an image (first: {partial.skipped[0][1] if partial.skipped else '?'}). Point it at image files.")
        results = {info.name: activations.finalize(partial, info, plan.fields[info.name], plan.input_hw) for info in plan.layers}
        crops = runner.run_crops(plan, workers, crop_requests(plan, results))
        rendered = projected = None
        if "featvis" in plan.stages:
            rendered = runner.run_featvis(plan, workers)
            projected = runner.run_projections(plan, workers, projection_requests(plan, results))
        dissection = _dissect(plan, workers) if "dissection" in plan.stages else None
        values = None
        if "shapley" in plan.stages:
            values = runner.run_shapley(plan, workers, {name: results[name].mean_map for name, _ in plan.shapley_layers})
    manifest = write_catalog(plan, results, crops, partial.skipped, {"started": started, "finished": _now()},
                             uuid.uuid4().hex, dissection, values, rendered, projected)
    runner.clear_work(plan)
    return RunResult(plan.catalog, manifest, total - reused, reused)


def _dissect(plan: RunPlan, workers: runner.Workers) -> DissectionOutput:
    cfg = dissection_config(plan.job)
    space = dissection_passes.label_space(plan.broden)
    passes = runner.run_dissection(plan, workers, plan.broden, space)
    layers = dissection_passes.layer_results(plan.layers, passes.thresholds, passes.tally, space, cfg.top, cfg.iou_threshold)
    return DissectionOutput(layers, passes.tally.images, passes.tally.skipped)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
