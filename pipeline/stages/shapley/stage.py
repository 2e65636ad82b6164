"""The shapley stage (importance): how much of the model's metric rests on each player unit, as a Shapley value
(Neuron Shapley's truncated Monte-Carlo, or maximum sample reuse with a surrogate) and/or a Banzhaf value, for the whole evaluation set and for each class
from the same evaluations, with intervals, and the ablation check; computed for the model as a whole, so reused
all or nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from catalog_schema import Catalog
from catalog_schema.layout import BANZHAF_COLUMNS, SHAPLEY_COLUMNS
from pipeline.errors import UserError
from pipeline.inputs.batches import iter_batches
from pipeline.inputs.features import source_of
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.images import ImageRecord, ImageSet
from pipeline.inputs.layouts import CHANNELS_LAST, native_map
from pipeline.inputs.models import LayerInfo, select_among
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.activations.stage import settings_hash as activations_hash
from pipeline.stages.protocol import WHOLE_MODEL, Context, Driver, LayerInputs, Shared, Stage, Worker
from pipeline.stages.shapley import estimator as est
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, repeatable, split_model, whole_model
from pipeline.stages.shapley.rounds import run_estimator
from pipeline.stages.shapley.settings import ShapleySettings, estimators
from pipeline.stages.shapley.warm import Prior, read_prior, warm_stats
from pipeline.stages.shapley.write import TABLES, copy_shapley, write_shapley

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan

ROUNDS = "rounds.pkl"  # the stage's checkpoint: the state after the last finished round


@dataclass(frozen=True)
class ShapleyPart:
    players: tuple[tuple[str, int], ...]  # player layers (path, units)
    eval_set: tuple[ImageRecord, ...]  # the evaluation images
    infos: tuple[LayerInfo, ...] = ()  # each player layer: its units-first shape and where it keeps its units
    classes: tuple[str, ...] = ()  # the class names, in label-index order


class ShapleyStage(Stage[ShapleySettings, ShapleyPart, Any]):
    name = "shapley"
    not_for_generators = "its metric is a classifier's accuracy on labelled images"
    Settings = ShapleySettings
    needs = (ActivationsStage,)  # a removed unit is replaced by its mean activation map
    reasons = {"activations": "the activations stage's settings changed", "eval_set": "the evaluation images changed",
               "features": "the dictionary of a feature layer among its players changed"}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> ShapleyPart:
        cfg = self.settings(plan.job)
        players = player_layers(cfg, model, plan.layers)
        infos = {info.name: info for info in plan.layers}
        classes = plan.images.classes
        part = ShapleyPart(players, eval_records(plan.images, cfg, plan.job.seed),
                           tuple(infos[n] for n, _ in players), tuple(classes))
        if not isinstance(survey.output, tuple) or len(survey.output) != 2 or survey.output[1] < len(classes):
            raise UserError(f"stage 'shapley' scores the model's class outputs, but the model returns {survey.output} for "
                            f"{len(classes)} classes in data.images ({', '.join(classes)}): it needs "
                            "[N, classes] logits in the sorted order of the class folders.")
        return part

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp, part, job = plan.fingerprints, self.part(plan), plan.job
        evals = json_fingerprint([(r.image_id, r.path, r.label_index) for r in part.eval_set])
        settings = json_fingerprint({"shapley": asdict(self.settings(job)), "players": part.players,
                                     "activations": activations_hash(plan), "seed": job.seed})
        features = json_fingerprint([fp["layers"][name] for name, _ in part.players if source_of(name)])
        return {WHOLE_MODEL: {"model": fp["model"], "data": fp["data"], "eval_set": evals, "settings": settings,
                              "features": features}}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> dict:
        """The previous run's tables, manifest sections and units columns (the model and evaluation set are unchanged)."""
        units = previous.arrow("units")
        values = zip(*(units.column(c).to_pylist() for c in ("layer", "unit", *SHAPLEY_COLUMNS, *BANZHAF_COLUMNS)))
        return {**{table: previous.arrow(table) for table in TABLES},
                "manifest": previous.manifest["shapley"], "settings": previous.manifest["settings"]["shapley"],
                "units": {(layer, unit): tuple(rest) for layer, unit, *rest in values
                          if rest[0] is not None or rest[len(SHAPLEY_COLUMNS)] is not None}}

    def prior(self, plan: RunPlan, previous: Catalog) -> Prior | None:
        """The previous catalog's TMC samples and probes, when this run uses TMC with the same metric and classes."""
        cfg, part = self.settings(plan.job), self.part(plan)
        if "tmc" not in estimators(cfg, sum(n for _, n in part.players)):
            return None
        prior = read_prior(previous, [name for name, _ in part.players])
        if prior is None or (prior.metric, prior.target_class, prior.classes) != (cfg.metric, cfg.target_class, part.classes):
            return None
        return prior

    def run(self, ctx: Context[ShapleySettings, ShapleyPart, Any], driver: Driver) -> Any:
        """est.ShapleyOutput, or the previous catalog's tables as `load` read them when nothing changed."""
        if ctx.reused is not None:
            return ctx.reused
        plan, cfg, part = ctx.plan, ctx.settings, ctx.part
        layers = list(part.players)
        maps = ctx.result_of(ActivationsStage).layers
        means = [_fill(info, maps[info.name]) for info in part.infos]
        layouts = tuple(info.layout for info in part.infos)
        setup = driver.share((list(part.eval_set), layers, means, cfg.metric, len(part.classes), layouts))
        images: list[int] = []

        def evaluate(items: list[np.ndarray]) -> list[np.ndarray]:
            out = driver.map(evaluate_coalitions, items, setup)
            if not images:
                images.append(out[0][1])
                if images[0] == 0:
                    raise UserError("stage 'shapley': none of the evaluation images could be read; check data.images.")
            return [values for values, _ in out]

        walks = lambda orders, chosen, v_full, v_none, settings: driver.map(  # noqa: E731
            walk_permutation, orders, setup, chosen, v_full, v_none, settings)
        players = sum(units for _, units in layers)
        warm: list[dict] = []

        def start(v_full: np.ndarray) -> est.SampleStats | None:  # the warm start, once V(all) is known
            found = warm_start(plan, ctx.prior, maps, layers, v_full)
            warm.extend(found[1:])
            return found[0]

        save = lambda state: driver.save(ROUNDS, state, rounds_held(state))  # noqa: E731
        estimates, v_full, v_none, ablation = run_estimator(evaluate, walks, players, cfg, plan.job.seed,
                                                            driver.load(ROUNDS), save, start)
        return est.ShapleyOutput(estimates, v_full, v_none, ablation, images[0], warm[0] if warm else None)

    def write(self, draft: Draft, ctx: Context[ShapleySettings, ShapleyPart, Any], result: Any) -> ManifestPart:
        if isinstance(result, est.ShapleyOutput):
            return write_shapley(draft, ctx.part.players, ctx.settings, result, list(ctx.part.classes))
        else:
            return copy_shapley(draft, result)


def warm_start(plan: RunPlan, prior: Prior | None, maps: dict[str, Any], layers: list[tuple[str, int]],
               v_full: np.ndarray) -> tuple:
    """(stats, manifest record) from the previous catalog's samples (`prior`), or (None,) when there is none;
    `maps`: the activations' layer results."""
    if prior is None:
        return (None,)
    paths = {r.image_id: r.path for r in plan.images.records}
    probes = {name: (maps[name].probe, [paths[int(i)] for i in maps[name].probe_ids]) for name, _ in layers}
    found = warm_stats(prior, layers, probes, float(v_full[0]), len(v_full))
    return found if found is not None else (None,)


def player_layers(cfg: ShapleySettings, model: nn.Module, layers: list[LayerInfo]) -> tuple[tuple[str, int], ...]:
    """The selected layers whose units are Shapley players: all of them unless [stages.shapley] layers (among
    model.layers and the dictionaries' features)."""
    names = [info.name for info in layers]
    if cfg.layers:
        names = select_among(model, cfg.layers, names, "stages.shapley.layers")
    return tuple((info.name, info.units) for info in layers if info.name in names)


def _fill(info: LayerInfo, activations: Any) -> np.ndarray:
    """What a removed unit's output becomes, one image's in the layer's own layout: its mean activation map; a
    feature's code becomes 0 (its decoder contribution is subtracted from the layer it reads, features.py)."""
    grid = torch.from_numpy(activations.mean_map.reshape(info.shape))
    prefix = torch.from_numpy(activations.prefix_mean)
    if source_of(info.name):
        grid, prefix = torch.zeros_like(grid), torch.zeros_like(prefix)
    return native_map(grid, prefix, info.layout, info.windows).numpy()


def eval_records(images: ImageSet, cfg: ShapleySettings, seed: int) -> tuple[ImageRecord, ...]:
    """A seeded subset of the labelled images (of `target_class` only, when set), in id order."""
    labelled = [r for r in images.records if r.label_index >= 0]
    if not labelled:
        raise UserError(f"stage 'shapley' needs labelled images: data.images {images.root} is a flat folder; "
                        "put the images in one sub-folder per class (ImageFolder), in the model's class order.")
    if cfg.target_class >= 0:
        if cfg.target_class >= len(images.classes):
            raise UserError(f"stages.shapley.target_class = {cfg.target_class}, but data.images has "
                            f"{len(images.classes)} classes (0..{len(images.classes) - 1}: {', '.join(images.classes)}).")
        labelled = [r for r in labelled if r.label_index == cfg.target_class]
    rng = np.random.default_rng([seed, 11])
    pick = np.sort(rng.choice(len(labelled), min(cfg.eval_images, len(labelled)), replace=False))
    return tuple(labelled[i] for i in pick)


def _ablator(worker: Worker, setup: tuple) -> Ablator:
    """The evaluator on an actor: the model split before its first player layer, the evaluation set cached."""
    records, layers, mean_maps, metric, classes, layouts = setup
    channels_last = frozenset(name for (name, _), layout in zip(layers, layouts) if layout in CHANNELS_LAST)
    split = split_model(worker.model(), [name for name, _ in layers], channels_last)
    if any(source_of(name) for name, _ in layers):  # a feature layer is read by a hook torch.fx does not trace
        split = whole_model(worker.model())
    size = worker.prep.batch_size
    batches = iter_batches(worker.root, [records[s:s + size] for s in range(0, len(records), size)], worker.prep, [],
                           worker.device)
    labels = {r.image_id: r.label_index for r in records}
    pairs = [(b.inputs, torch.as_tensor([labels[int(i)] for i in b.image_ids])) for b in batches]
    eval_set = cache_eval_set(split, pairs)
    if not repeatable(split, eval_set):
        split = whole_model(worker.model())
        eval_set = cache_eval_set(split, pairs)
    return Ablator(split, layers, mean_maps, eval_set, metric, worker.device, classes, layouts)


def evaluate_coalitions(worker: Worker, removed: np.ndarray, setup: Shared) -> tuple[np.ndarray, int]:
    """On an actor: the metric for each row of `removed`, and the number of evaluation images used."""
    ablator = worker.memo("shapley", setup, lambda s: _ablator(worker, s))
    return ablator.evaluate(removed), ablator.eval_set.images


def walk_permutation(worker: Worker, order: np.ndarray, setup: Shared, chosen: np.ndarray, v_full: np.ndarray,
                     v_none: np.ndarray, settings: est.WalkSettings) -> tuple[np.ndarray, int]:
    """On an actor: one permutation's marginals and the evaluations it took."""
    ablator = worker.memo("shapley", setup, lambda s: _ablator(worker, s))
    before = ablator.evaluations
    samples = est.walk(ablator.evaluate, order, chosen, v_full, v_none, settings)
    return samples, ablator.evaluations - before


def rounds_held(state: dict) -> dict[str, int]:
    """What the rounds checkpoint holds, by kind: finished TMC rounds, evaluated MSR and Banzhaf coalitions."""
    return {"Shapley round(s)": state["tmc"][2] if "tmc" in state else 0,
            **({"MSR coalition(s)": len(state["msr"])} if "msr" in state else {}),
            **({"Banzhaf coalition(s)": len(state["banzhaf"])} if "banzhaf" in state else {})}
