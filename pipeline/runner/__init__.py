"""The only Ray code (with task_pool.py): model actors, shard fan-out, completion-order merging, checkpoints.

Workers keep the model loaded (one actor per GPU, or per `cpus_per_worker`
CPUs); each finished shard's partial is saved under the catalog's work
directory, so running the same command after an interruption skips it.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import ray
import torch
from tqdm import tqdm

from pipeline.inputs.batches import Preprocess, global_batches, iter_batches
from pipeline.inputs.broden import Broden
from pipeline.inputs.concept_batches import iter_concept_batches
from pipeline.errors import UserError
from pipeline.inputs.images import ImageRecord
from pipeline.interrupts import stop_on_signals
from pipeline.inputs.models import LayerInfo, build_model
from pipeline.runner.task_pool import completed, in_order
from pipeline.plan import ConceptShard, FeatvisTask, RunPlan, Shard, activations_config, dissection_config, shapley_config
from pipeline.stages.activations import compute as activations
from pipeline.stages.dissection import passes as dissection_passes
from pipeline.stages.activations import crops as example_crops
from pipeline.stages.featvis import render as featvis
from pipeline.stages.featvis import projections
from pipeline.stages.shapley import estimator as shapley
from pipeline.stages.dissection import radix
from pipeline.stages.featvis.render import FeatvisSettings
from pipeline.stages.featvis.projections import ProjectionBatch, ProjectionRequest
from pipeline.stages.dissection.measure import LabelSpace, finalize_thresholds
from pipeline.stages.activations.crops import CropBatch, CropRequest
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, split_model


T = TypeVar("T")


class ModelWorker:
    """Holds one copy of the model; runs stage code on shards sent to it.

    The model is built on the first call from the recipe reference every call carries (the
    driver keeps it alive), so an actor Ray restarts after a crash rebuilds it the same way.
    """

    def __init__(self, root: str, prep: Preprocess, threads: int):
        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS; torch must match the actor's CPUs
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.root, self.prep = Path(root), prep
        self.model: torch.nn.Module | None = None
        self.broden: tuple[str, Broden] | None = None  # (object id, the concept data set) of the last call
        self.ablator: tuple[str, Ablator] | None = None  # (object id of its settings, the Shapley evaluator)

    def ready(self) -> bool:
        """Answers once the actor's process is up."""
        return True

    def _loaded(self, recipe: list[ray.ObjectRef]) -> torch.nn.Module:
        if self.model is None:
            self.model = build_model(ray.get(recipe[0])).to(self.device)
        return self.model

    def activations(self, recipe: list[ray.ObjectRef], shard: Shard, layers: list[LayerInfo], k: int,
                    probe_ids: frozenset[int]) -> tuple[int, activations.ActivationsPartial]:
        model = self._loaded(recipe)
        skipped: list[tuple[int, str]] = []
        groups = global_batches(shard.records, self.prep.batch_size)
        batches = iter_batches(self.root, groups, self.prep, skipped, self.device)
        partial = activations.compute(model, layers, batches, k, probe_ids)
        partial.skipped = sorted(skipped)
        return shard.index, partial

    def _concepts(self, ref: list[ray.ObjectRef]) -> Broden:
        if self.broden is None or self.broden[0] != ref[0].hex():
            self.broden = (ref[0].hex(), ray.get(ref[0]))
        return self.broden[1]

    def thresholds(self, recipe: list[ray.ObjectRef], broden: list[ray.ObjectRef], shard: ConceptShard, layers: list[LayerInfo],
                   quantile: float, totals: dict[str, int], floor: dict) -> tuple[int, dissection_passes.ConceptPartial]:
        model, concepts = self._loaded(recipe), self._concepts(broden)
        skipped: list[tuple[int, str]] = []
        batches = iter_concept_batches(concepts, shard.ids, self.prep, skipped, self.device)
        partial = dissection_passes.threshold_pass(model, layers, batches, quantile, totals, floor)
        partial.skipped = sorted(skipped)
        return shard.index, partial

    def radix(self, recipe: list[ray.ObjectRef], broden: list[ray.ObjectRef], shard: ConceptShard, layers: list[LayerInfo],
              states: dict) -> tuple[int, dissection_passes.ConceptPartial]:
        model, concepts = self._loaded(recipe), self._concepts(broden)
        skipped: list[tuple[int, str]] = []
        batches = iter_concept_batches(concepts, shard.ids, self.prep, skipped, self.device)
        partial = dissection_passes.radix_pass(model, layers, batches, states)
        partial.skipped = sorted(skipped)
        return shard.index, partial

    def tally(self, recipe: list[ray.ObjectRef], broden: list[ray.ObjectRef], shard: ConceptShard, layers: list[LayerInfo],
              thresholds: dict, space: LabelSpace) -> tuple[int, dissection_passes.ConceptPartial]:
        model, concepts = self._loaded(recipe), self._concepts(broden)
        skipped: list[tuple[int, str]] = []
        batches = iter_concept_batches(concepts, shard.ids, self.prep, skipped, self.device)
        partial = dissection_passes.tally_pass(model, layers, batches, thresholds, space)
        partial.skipped = sorted(skipped)
        return shard.index, partial

    def _shapley(self, recipe: list[ray.ObjectRef], setup: list[ray.ObjectRef]) -> Ablator:
        """The evaluator, built on first use from the setup every call carries (survives actor restarts)."""
        if self.ablator is None or self.ablator[0] != setup[0].hex():
            records, layers, mean_maps, metric = ray.get(setup[0])
            split = split_model(self._loaded(recipe), [name for name, _ in layers])
            batches = iter_batches(self.root, [records[s:s + self.prep.batch_size]
                                               for s in range(0, len(records), self.prep.batch_size)], self.prep, [], self.device)
            labels = {r.image_id: r.label_index for r in records}
            pairs = [(b.inputs, torch.as_tensor([labels[int(i)] for i in b.image_ids])) for b in batches]
            self.ablator = (setup[0].hex(), Ablator(split, layers, mean_maps, cache_eval_set(split, pairs), metric, self.device))
        return self.ablator[1]

    def shapley_evaluate(self, recipe: list[ray.ObjectRef], setup: list[ray.ObjectRef], removed) -> tuple:
        """The metric for each row of `removed`, and the number of evaluation images used."""
        ablator = self._shapley(recipe, setup)
        return ablator.evaluate(removed), ablator.eval_set.images

    def shapley_walk(self, recipe: list[ray.ObjectRef], setup: list[ray.ObjectRef], order, chosen, v_full: float,
                     v_none: float, settings: shapley.WalkSettings) -> tuple:
        """One permutation's marginals and the evaluations it took."""
        ablator = self._shapley(recipe, setup)
        before = ablator.evaluations
        samples = shapley.walk(ablator.evaluate, order, chosen, v_full, v_none, settings)
        return samples, ablator.evaluations - before

    def featvis(self, recipe: list[ray.ObjectRef], task: FeatvisTask, settings: FeatvisSettings, seed: int) -> tuple:
        """One task's units rendered; keyed by the task's index."""
        chunk = featvis.render(self._loaded(recipe), task.layer, task.layer_index, list(task.units), settings, seed,
                               self.device, task.batch)
        return task.index, {task.index: chunk}

    def projections(self, recipe: list[ray.ObjectRef], chunk: ImageChunk, layers: list[LayerInfo],
                    patch: int) -> tuple[int, dict[str, list[ProjectionBatch]]]:
        model = self._loaded(recipe)
        batches = iter_batches(self.root, [list(chunk.records)], self.prep, [], self.device)
        return chunk.index, {layer: [b] for layer, b in projections.project(model, layers, batches, chunk.requests, patch).items()}

    def crops(self, recipe: list[ray.ObjectRef], chunk: ImageChunk, layers: list[LayerInfo],
              patch: int) -> tuple[int, dict[str, list[CropBatch]]]:
        model = self._loaded(recipe)
        batches = iter_batches(self.root, [list(chunk.records)], self.prep, [], self.device)
        return chunk.index, {layer: [b] for layer, b in example_crops.render(model, layers, batches, chunk.requests, patch).items()}


@contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connect to `address` (a cluster), else start an embedded local Ray; reuse one already started."""
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    try:
        with stop_on_signals():  # again: ray.init replaced the handlers (its SIGTERM one dumps stacks)
            yield
    finally:
        ray.shutdown()


@dataclass
class Workers:
    """The model actors, and a reference to the recipe they build the model from (held alive by the driver)."""

    actors: list
    recipe: list


def start_workers(plan: RunPlan) -> Workers:
    """Model actors: one per GPU when the cluster has GPUs, else one per `cpus_per_worker` CPUs."""
    cfg = plan.job.ray
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    use_gpu = gpus > 0 and cfg.gpus_per_worker > 0
    cpus = max(1.0, resources.get("CPU", 1.0))
    count = cfg.workers or (int(gpus // cfg.gpus_per_worker) if use_gpu else max(1, int(cpus) // cfg.cpus_per_worker))
    count = max(1, min(count, len(plan.shards)))
    share = min(float(cfg.cpus_per_worker), cpus / count)  # never ask for more CPUs than exist: actors would wait forever
    threads = max(1, int(share))
    actor = ray.remote(ModelWorker).options(
        num_cpus=share, num_gpus=cfg.gpus_per_worker if use_gpu else 0, max_restarts=2, max_task_retries=2,
    )
    workers = [actor.remote(str(plan.images.root), plan.prep, threads) for _ in range(count)]
    ray.get([w.ready.remote() for w in workers])  # started (a stage's time is then its own)
    return Workers(workers, [ray.put(plan.recipe)])  # a list: Ray passes a nested reference as is, unresolved


def run_activations(plan: RunPlan, workers: Workers) -> activations.ActivationsPartial:
    """Every shard through the activations stage (the layers not reused), resuming from checkpointed shards."""
    k = activations_config(plan.job).k
    layers = plan.layers_to_compute("activations")
    call = lambda actor, shard, _total: actor.activations.remote(workers.recipe, shard, layers, k, plan.probe_ids)  # noqa: E731
    return fan_out(plan.work_dir("activations"), "activations", plan.shards, workers, call,
                   activations.merge, activations.empty(layers, k))


def fan_out(work: Path, desc: str, shards: list, workers: Workers, call: Callable,
            merge: Callable[[T, T], T], total: T) -> T:
    """Send every shard not checkpointed in `work` to the actors, merging partials as they complete.

    `call(actor, shard, total)` returns a remote (shard index, partial); it runs when an actor is
    free, with what is merged so far. Each finished partial is saved before it is merged, so an
    interrupted run resumes from what finished.
    """
    work.mkdir(parents=True, exist_ok=True)
    todo = []
    for shard in shards:
        saved = work / f"shard-{shard.index:06d}.pkl"
        if saved.exists():
            total = merge(total, pickle.loads(saved.read_bytes()))
        else:
            todo.append(shard)
    merged = [total]
    with tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard", desc=desc, file=sys.stderr, disable=None) as bar:
        for _, (index, partial) in completed(workers.actors, todo, lambda actor, shard: call(actor, shard, merged[0])):
            _atomic_write(work / f"shard-{index:06d}.pkl", pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL))
            merged[0] = merge(merged[0], partial)
            bar.update(1)
    return merged[0]


def run_featvis(plan: RunPlan, workers: Workers) -> dict[int, featvis.FeatvisChunk]:
    """Every task's units rendered on the actors, checkpointed per task (task index -> chunk)."""
    wanted = {info.name for info in plan.layers_to_compute("featvis")}
    call = lambda actor, task, _total: actor.featvis.remote(workers.recipe, task, plan.featvis, plan.job.seed)  # noqa: E731
    return fan_out(plan.work_dir("featvis"), "feature visualization", [t for t in plan.featvis_tasks if t.layer in wanted],
                   workers, call, lambda a, b: {**a, **b}, {})


@dataclass
class DissectionPasses:
    """What the two passes over the concept data set produced."""

    thresholds: dict  # layer -> float32 [units]
    tally: dissection_passes.ConceptPartial


def run_dissection(plan: RunPlan, workers: Workers, broden: Broden, space: LabelSpace) -> DissectionPasses:
    """Thresholds (pass 1), then the tally (pass 2), each sharded, merged exactly and checkpointed."""
    cfg = dissection_config(plan.job)
    ref = [ray.put(broden)]
    layers = plan.layers_to_compute("dissection")
    totals = dissection_passes.activation_counts(layers, len(broden.images))
    if dissection_pass_names(plan)[0] != "dissection-thresholds":
        thresholds = _radix_thresholds(plan, workers, ref, layers, broden)
    else:
        first = lambda actor, shard, total: actor.thresholds.remote(  # noqa: E731
            workers.recipe, ref, shard, layers, cfg.quantile, totals, dissection_passes.floors(total))
        partial = fan_out(plan.work_dir("dissection-thresholds"), "dissection thresholds", plan.concept_shards, workers,
                          first, dissection_passes.merge, dissection_passes.empty_thresholds(layers, cfg.quantile, totals))
        _check_concepts_read(partial, broden)
        thresholds = {name: finalize_thresholds(part) for name, part in partial.layers.items()}
    second = lambda actor, shard, _total: actor.tally.remote(workers.recipe, ref, shard, layers, thresholds, space)  # noqa: E731
    tally = fan_out(plan.work_dir("dissection-tally"), "dissection tally", plan.concept_shards, workers, second,
                    dissection_passes.merge, dissection_passes.empty_tally(layers, space))
    return DissectionPasses(thresholds, tally)


def dissection_pass_names(plan: RunPlan) -> list[str]:
    """The checkpoint folders (work_dir names) of the passes `run_dissection` makes over the concept shards."""
    cfg = dissection_config(plan.job)
    layers = plan.layers_to_compute("dissection")
    return [*dissection_passes.threshold_passes(layers, len(plan.broden.images), cfg.quantile, cfg.threshold_memory_mb),
            "dissection-tally"]


def _radix_thresholds(plan: RunPlan, workers: Workers, ref: list, layers: list[LayerInfo],
                      broden: Broden) -> dict[str, np.ndarray]:
    """The same exact thresholds in bounded memory: three counting passes (radix selection, see radix_thresholds)."""
    quantile = dissection_config(plan.job).quantile
    states = {info.name: radix.start(info.units) for info in layers}
    for step in range(len(radix.PASSES)):
        call = lambda actor, shard, _total, states=states: actor.radix.remote(  # noqa: E731
            workers.recipe, ref, shard, layers, states)
        empty = dissection_passes.ConceptPartial({info.name: radix.empty(info.units, step) for info in layers})
        partial = fan_out(plan.work_dir(f"dissection-radix{step}"), f"dissection thresholds {step + 1}/{len(radix.PASSES)}",
                          plan.concept_shards, workers, call, dissection_passes.merge, empty)
        _check_concepts_read(partial, broden)
        states = {name: radix.select(states[name], part, quantile) for name, part in partial.layers.items()}
    return {name: radix.thresholds(state) for name, state in states.items()}


def _check_concepts_read(partial: dissection_passes.ConceptPartial, broden: Broden) -> None:
    if partial.images == 0:
        raise UserError(f"concepts.broden {broden.root}: none of its {len(broden.images)} images could be read "
                        f"(first: {partial.skipped[0][1] if partial.skipped else '?'}). Fix the images or their masks.")


def run_crops(plan: RunPlan, workers: Workers, requests: list[CropRequest]) -> dict[str, list[CropBatch]]:
    """Render the example crops; images are chunked by sorted id so the work split is always the same."""
    return _by_image(plan, workers, requests, "crops", "example crops")


def run_projections(plan: RunPlan, workers: Workers, requests: list[ProjectionRequest]) -> dict[str, list[ProjectionBatch]]:
    """Deconvnet and guided-backprop projections of the top examples, chunked like the crops."""
    return _by_image(plan, workers, requests, "projections", "projections")


@dataclass(frozen=True)
class ImageChunk:
    """One batch of images (by sorted id) and the crops or projections asked of them."""

    index: int
    records: tuple[ImageRecord, ...]
    requests: tuple


def _by_image(plan: RunPlan, workers: Workers, requests: list, method: str, desc: str) -> dict[str, list]:
    """Requests grouped by image into chunks of one batch, fanned out and checkpointed like shards."""
    patch = activations_config(plan.job).patch_size
    asked = {req.layer for req in requests}
    layers = [info for info in plan.layers if info.name in asked]
    by_id = {rec.image_id: rec for rec in plan.images.records}
    wanted: dict[int, list] = {}
    for req in requests:
        wanted.setdefault(req.image_id, []).append(req)
    ids = sorted(wanted)
    size = plan.prep.batch_size
    chunks = [ImageChunk(n, tuple(by_id[i] for i in ids[s:s + size]), tuple(r for i in ids[s:s + size] for r in wanted[i]))
              for n, s in enumerate(range(0, len(ids), size))]
    call = lambda actor, chunk, _total: getattr(actor, method).remote(workers.recipe, chunk, layers, patch)  # noqa: E731
    merge = lambda a, b: {layer: a.get(layer, []) + b.get(layer, []) for layer in {*a, *b}}  # noqa: E731
    return fan_out(plan.work_dir(method), desc, chunks, workers, call, merge, {})


def checkpoints(plan: RunPlan, stage: str) -> int:
    """How many finished shards (or chunks) of a stage an interrupted run left."""
    return len(list(plan.work_dir(stage).glob("shard-*.pkl")))


def shapley_rounds_done(plan: RunPlan) -> int:
    """Shapley rounds an interrupted run finished (its state is resumed from them)."""
    saved = plan.work_dir("shapley") / "rounds.pkl"
    return pickle.loads(saved.read_bytes())[2] if saved.exists() else 0


def clear_work(plan: RunPlan) -> None:
    """Drop shard checkpoints once the catalog holds their result."""
    shutil.rmtree(plan.catalog / ".work", ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_shapley(plan: RunPlan, workers: Workers, mean_maps: dict[str, np.ndarray]) -> shapley.ShapleyOutput:
    """Rounds of permutations on the actors, the bandit on the driver, then the ablation check."""
    cfg = shapley_config(plan.job)
    layers = list(plan.shapley_layers)
    setup = [ray.put((list(plan.shapley_eval), layers, [mean_maps[name] for name, _ in layers], cfg.metric))]
    call = lambda actor, removed: actor.shapley_evaluate.remote(workers.recipe, setup, removed)  # noqa: E731
    players = sum(units for _, units in layers)
    (ends, eval_images), = in_order(workers.actors, [np.stack([np.zeros(players, bool), np.ones(players, bool)])], call)
    if eval_images == 0:
        raise UserError("stage 'shapley': none of the evaluation images could be read; check data.images.")
    v_full, v_none = float(ends[0]), float(ends[1])
    settings = shapley.WalkSettings(cfg.tolerance, cfg.patience)
    saved = plan.work_dir("shapley") / "rounds.pkl"  # the state after the last finished round: a restart resumes there
    stats, history, rounds = shapley.SampleStats.empty(players), [], 0
    if saved.exists():
        stats, history, rounds = pickle.loads(saved.read_bytes())
    with tqdm(total=cfg.rounds, initial=rounds, unit="round", desc="shapley", file=sys.stderr, disable=None) as bar:
        while rounds < cfg.rounds:
            chosen = shapley.unsettled(stats, cfg.top_k, cfg.delta) if cfg.bandit else np.ones(players, bool)
            if not chosen.any():
                break
            orders = [np.random.default_rng([plan.job.seed, rounds + 1, i]).permutation(players)
                      for i in range(cfg.permutations_per_round)]
            walk = lambda actor, order: actor.shapley_walk.remote(  # noqa: E731
                workers.recipe, setup, order, chosen, v_full, v_none, settings)
            for samples, evaluations in in_order(workers.actors, orders, walk):  # in order: deterministic
                stats.add(samples)
                stats.evaluations += evaluations
            rounds += 1
            history.append((stats.evaluations, int(chosen.sum())))
            saved.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(saved, pickle.dumps((stats, history, rounds), protocol=pickle.HIGHEST_PROTOCOL))
            bar.update(1)
    result = shapley.summarize(stats, v_full, v_none, rounds, cfg.ci_delta, history)
    return shapley.ShapleyOutput(result, _ablation_check(workers, call, result, v_full, players, plan.job.seed), eval_images)


def _ablation_check(workers: Workers, call: Callable, result: shapley.ShapleyResult, v_full: float, players: int,
                    seed: int) -> list[tuple[int, str, float, float, np.ndarray]]:
    """The metric after removing the top-N Shapley units, N random units, and the N largest single-unit effects."""
    singles = np.eye(players, dtype=bool)
    single_values = np.concatenate([v for v, _ in in_order(workers.actors, [singles[s:s + 8] for s in range(0, players, 8)], call)])
    coalitions = shapley.ablation_coalitions(result.value, v_full - single_values, seed)
    values = np.concatenate([v for v, _ in in_order(workers.actors, [np.stack([c for _, _, c in coalitions[s:s + 8]])
                                                                     for s in range(0, len(coalitions), 8)], call)])
    rows, seen = [], {}
    for (n, method, removed), value in zip(coalitions, values):
        seen.setdefault((n, method), []).append((value, removed))
    for (n, method), draws in seen.items():
        value = float(np.mean([v for v, _ in draws]))
        rows.append((n, method, value, v_full - value, draws[0][1]))
    return rows
