"""One cataloging run, from job file to catalog: plan on the driver, distribute, finalize, write."""

from __future__ import annotations

import dataclasses
import errno
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalog_schema import MANIFEST, Catalog, CatalogError
from catalog_schema.layout import WORK
from pipeline import reuse, runner
from pipeline.catalog import history as catalog_history
from pipeline.catalog.lock import catalog_lock
from pipeline.catalog.writer import write_catalog
from pipeline.errors import UserError
from pipeline.interrupts import Interrupted, interruption
from pipeline.job.config import JobConfig
from pipeline.job.load import check_output_location
from pipeline.plan import RunPlan, check_catalog_target
from pipeline.planning import make_plan
from pipeline.registry import selected_stages
from pipeline.reuse import Stages
from pipeline.stages.protocol import Context


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class RunResult:
    catalog: Path
    manifest: dict[str, Any]
    shards_computed: int
    shards_reused: int
    parts_reused: dict[str, int] = dataclasses.field(default_factory=dict)  # other checkpoints resumed from, by kind
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # wall time per step of the run


def run_job(job: JobConfig, *, address: str | None = None, out: Path | None = None,
            stages: tuple[str, ...] | None = None, previous: str | None = None) -> RunResult:
    """Catalog every unit of the job's layers; resumes from shard checkpoints of an interrupted run.

    `previous` (or the job's `previous`): a catalog whose results are reused where their inputs did
    not change, or "latest". With [output] history, each run writes its own folder under the catalog
    path and `latest` is moved to it once the catalog is complete.
    """
    root = (out or job.output.catalog).resolve()
    if out is not None:
        check_output_location(job, root)
    try:
        if not job.output.history:
            check_catalog_target(root)
            with catalog_lock(root):
                return _run(job, address, root, stages, _previous(job, previous, root))
        catalog_history.check_history_root(root)
        with catalog_lock(root):  # one run at a time per history: they share `latest`
            before = _previous(job, previous, root)
            result = _run(job, address, catalog_history.run_folder(root), stages, before)
            catalog_history.point_latest(root, result.catalog)
            return result
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise UserError(f"no space left on the device while writing {exc.filename or root} ({exc.strerror}). The catalog "
                        f"{root} is as it was before this run: a new version is moved into place only once written "
                        "completely. Finished shards stay in the catalog folder's .work: free space (or choose another "
                        "[output] catalog / --out) and run the same command again.") from None


def _previous(job: JobConfig, given: str | None, root: Path) -> Catalog | None:
    """The catalog to reuse results from: --previous, else the job's `previous`; None for none (yet)."""
    value = given or job.previous
    if not value:
        return None
    if value == "latest":
        found = catalog_history.latest(root) if job.output.history else (root if (root / MANIFEST).exists() else None)
        return Catalog.open(found) if found else None  # the first run of a schedule has nothing to reuse
    path = Path(value) if given else (job.path.parent / value)
    key = "--previous" if given else f"job key 'previous' in {job.path}"
    try:
        return Catalog.open(path.resolve())
    except CatalogError as exc:
        raise UserError(f"{key}: {exc} Give a finished catalog, \"latest\", or leave it out to compute everything.") from None


def _run(job: JobConfig, address: str | None, catalog: Path, names: tuple[str, ...] | None,
         previous: Catalog | None) -> RunResult:
    started, clock = _now(), time.perf_counter()
    stages = selected_stages(names or job.stages.requested())
    plan = make_plan(job, stages, catalog)
    inputs = reuse.stage_inputs(plan, stages)
    compute, record = reuse.decide(inputs, previous, stages)
    plan = dataclasses.replace(plan, compute=compute, fingerprints={**plan.fingerprints, "inputs": inputs})
    reused = reuse.load(plan, stages, previous)
    priors = reuse.priors(plan, stages, previous)
    contexts = {name: Context(plan, stage.settings(job), stage.part(plan), reused.get(name), priors.get(name))
                for name, stage in stages.items()}
    address = address or job.ray.address or os.environ.get("RAY_ADDRESS", "")
    progress = runner.Progress()
    try:
        return _distribute_and_write(plan, stages, contexts, address, record, started, clock, progress)
    except (Interrupted, SystemError) as exc:
        stop = interruption(exc)
        if stop is None:
            raise
        extra = ", ".join(f"{n} {kind}" for kind, n in progress.checkpointed().items() if n)
        stop.summary = (f"{progress.reused + progress.computed} of the {progress.begun} shards begun"
                        f"{f' (and {extra})' if extra else ''} are checkpointed in {plan.catalog / WORK}; "
                        "run the same command to resume")
        raise stop from None


def _distribute_and_write(plan: RunPlan, stages: Stages, contexts: dict[str, Context], address: str, record: dict,
                          started: str, clock: float, progress: runner.Progress) -> RunResult:
    """Every stage on the Ray actors, in pipeline order, then the catalog; `clock`: when the run began (perf_counter)."""
    seconds = {"prepare and plan": round(time.perf_counter() - clock, 2)}
    start = time.perf_counter()
    results: dict[str, Any] = {}
    with runner.ray_session(address), runner.model_workers(plan) as workers:
        seconds["ray start"] = round(time.perf_counter() - start, 2)  # Ray and the model actors up
        added: dict[str, Any] = {}
        for name, stage in stages.items():
            driver = runner.Driver(plan, workers, name, seconds, progress)
            contexts[name] = dataclasses.replace(contexts[name], upstream={need: results[need.name] for need in stage.needs},
                                                 added=dict(added))
            with driver.timed(name):
                results[name] = stage.run(contexts[name], driver)
            parts = stage.model_parts(results[name])
            workers.attach(list(parts.values()))
            added.update(parts)
    times = {"started": started, "finished": _now(), "wall_seconds": [{"step": k, "seconds": v} for k, v in seconds.items()]}
    start = time.perf_counter()
    manifest = write_catalog(plan, stages, contexts, results, times, uuid.uuid4().hex, record)
    seconds["write"] = round(time.perf_counter() - start, 2)
    runner.clear_work(plan)
    return RunResult(plan.catalog, manifest, progress.computed, progress.reused,
                     {k: v for k, v in progress.resumed.items() if v}, seconds)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
