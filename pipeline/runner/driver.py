"""The driver side of a run: model actors started once, and the passes stages ask for, fanned out to them.

Each finished shard's partial is saved under the catalog's work folder before it is merged, so
running the same command after an interruption skips it (see `Driver.fan_out`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from tqdm import tqdm

from catalog_schema.layout import WORK, shard_file
from pipeline.plan import RunPlan
from pipeline.runner import pool
from pipeline.runner.task_pool import completed, get_all, in_order
from pipeline.runner.worker import ModelWorker, RunSetup

T = TypeVar("T")


@dataclass
class Workers:
    """The model actors, and a reference to the run's setup they build the model from (held alive by the driver)."""

    actors: list
    setup: list
    value: RunSetup | None = None  # what `setup` refers to

    def attach(self, parts: Sequence[Any]) -> None:
        """From now on the actors' model has `parts` attached too (an earlier stage's, for the stages after it)."""
        if parts:
            self.value = dataclasses.replace(self.value, parts=self.value.parts + tuple(parts))
            self.setup = [ray.put(self.value)]


@contextmanager
def model_workers(plan: RunPlan) -> Iterator[Workers]:
    """Model actors: one per GPU when the cluster has GPUs, else one per `cpus_per_worker` CPUs; kept for
    the next run when the process asked for it (runner.pool) and the block ended without an error, killed
    at once when it did not (a stop must not wait for a long featvis batch)."""
    cfg = plan.job.ray
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    use_gpu = gpus > 0 and cfg.gpus_per_worker > 0
    cpus = max(1.0, resources.get("CPU", 1.0))
    count = cfg.workers or (int(gpus // cfg.gpus_per_worker) if use_gpu else max(1, int(cpus) // cfg.cpus_per_worker))
    count = max(1, min(count, len(plan.shards)))
    share = min(float(cfg.cpus_per_worker), cpus / count)  # never ask for more CPUs than exist: actors would wait forever
    shape = (share, float(cfg.gpus_per_worker) if use_gpu else 0.0)
    actor = ray.remote(ModelWorker).options(num_cpus=shape[0], num_gpus=shape[1], max_restarts=2, max_task_retries=2)
    actors = pool.take(shape, count)
    actors += [actor.remote(max(1, int(share))) for _ in range(count - len(actors))]
    try:
        get_all([w.ready.remote() for w in actors])  # started (a stage's time is then its own)
        setup = RunSetup(plan.recipe, str(plan.images.root), plan.prep, cfg.cpus_per_worker)
        yield Workers(actors, [ray.put(setup)], setup)  # a list: Ray passes a nested reference as is, unresolved
    except BaseException:  # a signal or an error: the actors' running tasks end now, not when they finish
        pool.stop(actors)
        raise
    pool.keep(shape, actors)


@dataclass
class Progress:
    """What the run's passes read back from an interrupted run's checkpoints and what they computed, counted as
    they go (every stage's driver adds to it): the summary of a finished, resumed or interrupted run."""

    begun: int = 0  # shards (and chunks) of the passes begun
    reused: int = 0  # of those, read back from checkpoints
    computed: int = 0  # of those, computed and checkpointed by this run
    resumed: dict[str, int] = field(default_factory=dict)  # kind -> how many a stage's own checkpoints held when read
    held: dict[str, dict[str, int]] = field(default_factory=dict)  # checkpoint -> {kind: count} it holds now

    def checkpointed(self) -> dict[str, int]:
        """What the stages' own checkpoints hold, by kind ('Shapley round(s)': 3)."""
        out: dict[str, int] = {}
        for holds in self.held.values():
            for kind, n in holds.items():
                out[kind] = out.get(kind, 0) + n
        return out


@dataclass(frozen=True)
class Checkpoint:
    """A stage's own checkpoint (Driver.save): its value and what it holds, by kind."""

    value: Any
    holds: dict[str, int]


@dataclass
class Driver:
    """What one stage's computation runs through (pipeline.stages.protocol.Driver)."""

    plan: RunPlan
    workers: Workers
    stage: str
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step, shared by the run's drivers
    progress: Progress = field(default_factory=Progress)  # shared by the run's drivers
    _steps: list[str] = field(default_factory=list)

    def share(self, value: Any) -> list:
        return [ray.put(value)]  # a list: passed to the actors unresolved, fetched once by each (Worker.get)

    def _submit(self, work: Callable, args: Callable[[Any], tuple] | tuple):
        def submit(actor, item):
            extra = args(item) if callable(args) else args
            return actor.run.remote(self.workers.setup, work, item, extra)
        return submit

    def fan_out(self, name: str, desc: str, shards: Sequence[Any], work: Callable, args: Callable[[Any], tuple],
                merge: Callable[[T, T], T], empty: T) -> T:
        """work(worker, shard, *args(merged so far)) for every shard not checkpointed, merged as they complete."""
        folder = self.plan.work_dir(name, self.stage)
        folder.mkdir(parents=True, exist_ok=True)
        total, todo = empty, []
        self.progress.begun += len(shards)
        for shard in shards:
            saved = folder / shard_file(shard.index)
            if saved.exists():
                total = merge(total, pickle.loads(saved.read_bytes()))
                self.progress.reused += 1
            else:
                todo.append(shard)
        merged = [total]
        submit = self._submit(work, lambda _shard: args(merged[0]))
        with tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard", desc=desc, file=sys.stderr,
                  disable=None) as bar:
            for i, partial in completed(self.workers.actors, todo, submit):
                atomic_write(folder / shard_file(todo[i].index), pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL))
                merged[0] = merge(merged[0], partial)
                self.progress.computed += 1
                bar.update(1)
        return merged[0]

    def map(self, work: Callable, items: Sequence[Any], *args: Any) -> list:
        return in_order(self.workers.actors, list(items), self._submit(work, args))

    def load(self, name: str) -> Any | None:
        path = self.plan.work_dir(self.stage, self.stage) / name
        if not path.exists():
            return None
        saved = pickle.loads(path.read_bytes())
        if not isinstance(saved, Checkpoint):  # written before checkpoints said what they hold
            return saved
        self.progress.held[str(path)] = saved.holds
        for kind, n in saved.holds.items():
            self.progress.resumed[kind] = self.progress.resumed.get(kind, 0) + n
        return saved.value

    def save(self, name: str, value: Any, holds: dict[str, int] | None = None) -> None:
        folder = self.plan.work_dir(self.stage, self.stage)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, pickle.dumps(Checkpoint(value, dict(holds or {})), protocol=pickle.HIGHEST_PROTOCOL))
        self.progress.held[str(folder / name)] = dict(holds or {})

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """The block's wall time counts as `step`, and not as the step it runs inside."""
        start = time.perf_counter()
        self.seconds.setdefault(step, 0.0)  # listed in the order the steps began
        self._steps.append(step)
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self._steps.pop()
            self.seconds[step] = round(self.seconds.get(step, 0.0) + spent, 2)
            if self._steps:
                outer = self._steps[-1]
                self.seconds[outer] = round(self.seconds.get(outer, 0.0) - spent, 2)


def clear_work(plan: RunPlan) -> None:
    """Drop the checkpoints once the catalog holds their result."""
    shutil.rmtree(plan.catalog / WORK, ignore_errors=True)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
