"""The dissection stage (Network Dissection): per unit a threshold at its top quantile over the concept data set,
then the IoU of its thresholded maps with every concept's masks, and its best concept.

The passes: thresholds (one pass keeping the top values, or three radix counting passes in bounded
memory), then the tally; each over the concept shards, merged exactly and checkpointed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from catalog_schema import Catalog
from catalog_schema.layout import DISSECTION_COLUMNS
from catalog_schema.tables import from_table, rows_of_layer
from pipeline.errors import UserError
from pipeline.inputs.broden import Broden, open_broden
from pipeline.inputs.concept_batches import iter_concept_batches
from pipeline.inputs.fingerprints import concepts_fingerprint, json_fingerprint
from pipeline.inputs.models import LayerInfo
from pipeline.job.checks import check_exists
from pipeline.stages.dissection import iqr, passes, radix
from pipeline.stages.dissection.tally import DissectionResult, LabelSpace
from pipeline.stages.dissection.thresholds import finalize_thresholds
from pipeline.stages.dissection.results import DissectionOutput
from pipeline.stages.dissection.settings import DissectionSettings
from pipeline.stages.dissection.write import write_dissection
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.protocol import Context, Driver, LayerInputs, Shared, Stage, Worker

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan


@dataclass(frozen=True)
class ConceptShard:
    """Whole global batches of concept images (positions in the Broden index)."""

    index: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class DissectionPart:
    broden: Broden
    shards: tuple[ConceptShard, ...]


class DissectionStage(Stage[DissectionSettings, DissectionPart, DissectionOutput]):
    name = "dissection"
    generators = True  # on the generated images and the segmenter's masks
    Settings = DissectionSettings
    needs = (ActivationsStage,)  # every catalog has the activations' units table
    reasons = {"concepts": "the concept data set changed"}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> DissectionPart:
        job = plan.job
        if job.concepts.broden is None:
            raise UserError("stage 'dissection' needs [concepts] segmenter = a segmenter of the generated images "
                            "(README, \"Dissecting a generator\")." if job.latents is not None else
                            "stage 'dissection' needs [concepts] broden = a Broden-format directory.")
        check_exists(job, "concepts.broden", job.concepts.broden)
        broden = open_broden(job.concepts.broden, job.concepts.categories)
        ids, size = list(range(len(broden.images))), plan.shard_images
        return DissectionPart(broden, tuple(ConceptShard(i, tuple(ids[s:s + size]))
                                            for i, s in enumerate(range(0, len(ids), size))))

    def fingerprints(self, part: DissectionPart) -> dict[str, str]:
        return {"concepts": concepts_fingerprint(part.broden)}

    def inputs(self, plan: RunPlan) -> LayerInputs:
        d = {k: v for k, v in asdict(self.settings(plan.job)).items() if k != "threshold_memory_mb"}  # how, not what
        settings = json_fingerprint({"dissection": d, "prep": asdict(plan.prep)})
        fp = plan.fingerprints
        return {info.name: {"layer": fp["layers"][info.name], "concepts": fp["concepts"], "settings": settings}
                for info in plan.layers}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> DissectionOutput:
        units, concepts = previous.arrow("units"), previous.arrow("dissection")
        found = {}
        for name in layers:
            rows = rows_of_layer(units, name).sort_by("unit")
            best = {c: from_table(rows, c) for c in ("layer", "unit", *DISSECTION_COLUMNS)}
            best["interpretable"] = best["interpretable"].astype(bool)
            table = rows_of_layer(concepts, name)
            found[name] = DissectionResult({c: from_table(table, c) for c in table.column_names}, best,
                                           np.zeros((0, 0), np.float32))
        info = previous.manifest.get("concepts") or {}
        return DissectionOutput(found, info.get("used", 0), [(s["index"], s["reason"]) for s in info.get("skipped", [])])

    def run(self, ctx: Context[DissectionSettings, DissectionPart, DissectionOutput], driver: Driver) -> DissectionOutput:
        reused = ctx.reused or DissectionOutput({}, 0, [])
        layers = ctx.plan.layers_to_compute(self.name)
        if not layers:
            return reused
        cfg, part = ctx.settings, ctx.part
        space, broden = passes.label_space(part.broden), driver.share(part.broden)
        route = passes.threshold_passes(layers, len(part.broden.images), cfg.quantile, cfg.threshold_memory_mb)
        if cfg.threshold == "iqr":
            thresholds = _iqr_thresholds(driver, part, broden, layers, space)
        elif route[0] == "dissection-thresholds":
            thresholds = _thresholds(driver, part, broden, layers, cfg.quantile)
        else:
            thresholds = _radix_thresholds(driver, part, broden, layers, cfg.quantile)
        tally = driver.fan_out("dissection-tally", "dissection tally", part.shards, tally_shard,
                               lambda _total: (broden, layers, thresholds, space, cfg.union, cfg.resize), passes.merge,
                               passes.empty_tally(layers, space))
        computed = passes.layer_results(layers, thresholds, tally, space, cfg.top, cfg.iou_threshold)
        return DissectionOutput({**reused.layers, **computed}, tally.images, tally.skipped)

    def write(self, draft: Draft, ctx: Context[DissectionSettings, DissectionPart, DissectionOutput],
              result: DissectionOutput) -> ManifestPart:
        return write_dissection(draft, ctx.plan, result, ctx.part.broden, ctx.settings)


def _thresholds(driver: Driver, part: DissectionPart, broden: Shared, layers: list[LayerInfo],
                quantile: float) -> dict[str, np.ndarray]:
    """Pass 1: each unit's top values over the concept data set (pruned by what the shards merged so far hold)."""
    totals = passes.activation_counts(layers, len(part.broden.images))
    partial = driver.fan_out("dissection-thresholds", "dissection thresholds", part.shards, threshold_shard,
                             lambda total: (broden, layers, quantile, totals, passes.floors(total)), passes.merge,
                             passes.empty_thresholds(layers, quantile, totals))
    _check_concepts_read(partial, part.broden)
    return {name: finalize_thresholds(p) for name, p in partial.layers.items()}


def _radix_thresholds(driver: Driver, part: DissectionPart, broden: Shared, layers: list[LayerInfo],
                      quantile: float) -> dict[str, np.ndarray]:
    """The same exact thresholds in bounded memory: three counting passes (radix selection, see radix.py)."""
    states = {info.name: radix.start(info.units) for info in layers}
    for step in range(len(radix.PASSES)):
        empty = passes.ConceptPartial({info.name: radix.empty(info.units, step) for info in layers})
        partial = driver.fan_out(f"dissection-radix{step}", f"dissection thresholds {step + 1}/{len(radix.PASSES)}",
                                 part.shards, radix_shard, lambda _total, states=states: (broden, layers, states),
                                 passes.merge, empty)
        _check_concepts_read(partial, part.broden)
        states = {name: radix.select(states[name], p, quantile) for name, p in partial.layers.items()}
    return {name: radix.thresholds(state) for name, state in states.items()}


def _iqr_thresholds(driver: Driver, part: DissectionPart, broden: Shared, layers: list[LayerInfo],
                    space: LabelSpace) -> dict[str, np.ndarray]:
    """GAN Dissection's rule: each unit's level of best information quality ratio with a concept (iqr.py)."""
    iqr.check_mask_sizes(part.broden)
    sample = driver.fan_out("dissection-iqr-levels", "dissection IQR levels", part.shards, iqr.sample_shard,
                            lambda _total: (broden, layers), iqr.merge, iqr.empty_sample(layers))
    _check_concepts_read(sample, part.broden)
    levels = {name: iqr.levels_of(values) for name, values in sample.layers.items()}
    counts = driver.fan_out("dissection-iqr-counts", "dissection IQR counts", part.shards, iqr.count_shard,
                            lambda _total: (broden, layers, levels, space), iqr.merge, iqr.empty_counts(layers, space))
    return {name: iqr.thresholds_of(c, counts.labels, counts.pixels, levels[name]) for name, c in counts.layers.items()}


def _check_concepts_read(partial: passes.ConceptPartial | iqr.IqrPartial, broden: Broden) -> None:
    if partial.images == 0:
        raise UserError(f"concepts.broden {broden.root}: none of its {len(broden.images)} images could be read "
                        f"(first: {partial.skipped[0][1] if partial.skipped else '?'}). Fix the images or their masks.")


def _batches(worker: Worker, broden: Shared, shard: ConceptShard, skipped: list, with_masks: bool = False):
    """The shard's concept batches; masks only for the tally (thresholds, like NetDissect-Lite's, come from
    every decodable image: one whose masks are unreadable is skipped by the tally alone)."""
    return iter_concept_batches(worker.get(broden), shard.ids, worker.prep, skipped, worker.device, with_masks)


def threshold_shard(worker: Worker, shard: ConceptShard, broden: Shared, layers: list[LayerInfo], quantile: float,
                    totals: dict[str, int], floor: dict) -> passes.ConceptPartial:
    skipped: list[tuple[int, str]] = []
    partial = passes.threshold_pass(worker.model(), layers, _batches(worker, broden, shard, skipped), quantile, totals, floor)
    partial.skipped = sorted(skipped)
    return partial


def radix_shard(worker: Worker, shard: ConceptShard, broden: Shared, layers: list[LayerInfo],
                states: dict) -> passes.ConceptPartial:
    skipped: list[tuple[int, str]] = []
    partial = passes.radix_pass(worker.model(), layers, _batches(worker, broden, shard, skipped), states)
    partial.skipped = sorted(skipped)
    return partial


def tally_shard(worker: Worker, shard: ConceptShard, broden: Shared, layers: list[LayerInfo], thresholds: dict,
                space: LabelSpace, union: str, resize: str) -> passes.ConceptPartial:
    skipped: list[tuple[int, str]] = []
    batches = _batches(worker, broden, shard, skipped, with_masks=True)
    partial = passes.tally_pass(worker.model(), layers, batches, thresholds, space, union, resize)
    partial.skipped = sorted(skipped)
    return partial
