"""The activations stage: per unit statistics, top and bottom dataset examples with their crops, mean maps, probes.

Every other stage builds on it, so every run makes it (and every catalog has its units table).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

import catalog_schema as cs
from catalog_schema import Catalog
from pipeline.errors import UserError
from pipeline.inputs.batches import global_batches, iter_batches
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.images import ImageRecord
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations import compute, crops
from pipeline.stages.activations.crops import CropRequest
from pipeline.stages.activations.reuse import read_layer, read_skipped
from pipeline.stages.activations.settings import ActivationsSettings, check
from pipeline.stages.activations.write import write_activations
from pipeline.stages.image_chunks import ImageChunk, image_chunks, merge_by_layer
from pipeline.stages.protocol import Driver, LayerInputs, Shard, Stage, Worker

if TYPE_CHECKING:
    from pipeline.catalog.writer import Draft
    from pipeline.plan import RunPlan


@dataclass(frozen=True)
class ActivationsPart:
    k: int  # top and bottom examples kept per unit
    patch: int  # pixels of the stored crops (and of the featvis projections)
    probe_ids: frozenset[int]  # images whose per-unit mean activation is kept for `diff`


@dataclass
class ActivationsResult:
    layers: dict[str, compute.LayerResult]  # every layer, computed or reused
    crops: dict[str, list[crops.CropBatch]]  # the example crops of the computed layers
    skipped: list[tuple[int, str]]  # images that could not be read
    reused: set[str] = field(default_factory=set)  # layers read back from the previous catalog
    previous: Catalog | None = None


class ActivationsStage(Stage):
    name = "activations"
    Settings = ActivationsSettings
    needs = ()
    arrays = (cs.EXAMPLES, cs.HEATMAPS, cs.MEAN_MAPS, cs.PROBES)

    def check(self, settings: ActivationsSettings, key: str) -> None:
        check(settings, key)

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> ActivationsPart:
        s = self.settings(plan.job)
        return ActivationsPart(s.k, s.patch_size, probe_sample(plan.images.records, s.probe_images))

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp, acts = plan.fingerprints, settings_hash(plan)
        return {info.name: {"layer": fp["layers"][info.name], "data": fp["data"], "settings": acts} for info in plan.layers}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> ActivationsResult:
        units = previous.arrow("units")
        return ActivationsResult({name: read_layer(previous, units, name) for name in layers}, {}, read_skipped(previous),
                                 set(layers), previous)

    def checkpoints(self, plan: RunPlan) -> list[tuple[str, Any]]:
        return [("activations", plan.shards if plan.layers_to_compute(self.name) else [])]

    def other_checkpoints(self, plan: RunPlan) -> dict[str, int]:
        return {"example-crop chunk(s)": plan.finished_shards("crops", self.name)}

    def run(self, plan: RunPlan, driver: Driver, results: dict[str, Any], reused: ActivationsResult | None) -> ActivationsResult:
        out = reused or ActivationsResult({}, {}, [])
        layers = plan.layers_to_compute(self.name)
        if layers:
            k, probe_ids = plan.parts[self.name].k, plan.parts[self.name].probe_ids
            partial = driver.fan_out("activations", "activations", plan.shards, shard_statistics,
                                     lambda _total: (layers, k, probe_ids), compute.merge, compute.empty(layers, k))
            if partial.images == 0:
                raise UserError(f"data.images {plan.images.root}: none of its {len(plan.images.records)} files could "
                                f"be read as an image (first: {partial.skipped[0][1] if partial.skipped else '?'}). "
                                "Point it at image files.")
            out.skipped = partial.skipped
            out.layers.update({info.name: compute.finalize(partial, info, plan.fields[info.name], plan.input_hw)
                               for info in layers})
        requests = crop_requests(plan, out.layers, plan.parts[self.name].k)
        patch = plan.parts[self.name].patch
        asked = [info for info in plan.layers if info.name in {req.layer for req in requests}]
        chunks = image_chunks(plan.images.records, requests, plan.prep.batch_size)
        out.crops = driver.fan_out("crops", "example crops", chunks, chunk_crops, lambda _total: (asked, patch),
                                   merge_by_layer, {})
        return out

    def write(self, draft: Draft, plan: RunPlan, result: ActivationsResult) -> None:
        write_activations(draft, plan, result, self.settings(plan.job))


def settings_hash(plan: RunPlan) -> str:
    """What every layer's activations depend on besides its weights and the data (also an input of later stages)."""
    job = plan.job
    return json_fingerprint({"activations": asdict(ActivationsStage().settings(job)), "prep": asdict(plan.prep),
                             "seed": job.seed, "limit": job.data.limit})


def probe_sample(records: tuple[ImageRecord, ...] | list[ImageRecord], n: int) -> frozenset[int]:
    """Image ids of the probe set: the `n` images whose paths hash lowest. It depends on paths only, so two
    catalogs of one data set probe the same images, and an image that stays keeps its place when others change."""
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.path.encode()).digest())
    return frozenset(r.image_id for r in ranked[:n])


def crop_requests(plan: RunPlan, layers: dict[str, compute.LayerResult], k: int) -> list[CropRequest]:
    """One request per example row of the computed layers: where to cut it and which activation counts as full heat."""
    requests = []
    for info in plan.layers_to_compute("activations"):
        res = layers[info.name]
        ex = res.examples
        vmax, vmin = res.units["act_max"], res.units["act_min"]
        for i in range(len(ex["unit"])):
            unit, top = int(ex["unit"][i]), ex["sign"][i] == "top"
            box = (int(ex["box_y0"][i]), int(ex["box_x0"][i]), int(ex["box_y1"][i]), int(ex["box_x1"][i]))
            requests.append(CropRequest(info.name, unit, int(ex["rank"][i]) + (0 if top else k), int(ex["image_id"][i]),
                                        box, float(vmax[unit] if top else vmin[unit])))
    return requests


def shard_statistics(worker: Worker, shard: Shard, layers: list[LayerInfo], k: int,
                     probe_ids: frozenset[int]) -> compute.ActivationsPartial:
    """On an actor: one shard's partial statistics and examples."""
    skipped: list[tuple[int, str]] = []
    batches = iter_batches(worker.root, global_batches(shard.records, worker.prep.batch_size), worker.prep, skipped,
                           worker.device)
    partial = compute.compute(worker.model(), layers, batches, k, probe_ids)
    partial.skipped = sorted(skipped)
    return partial


def chunk_crops(worker: Worker, chunk: ImageChunk, layers: list[LayerInfo], patch: int) -> dict[str, list[crops.CropBatch]]:
    """On an actor: the crops and heat maps asked of one chunk of images."""
    batches = iter_batches(worker.root, [list(chunk.records)], worker.prep, [], worker.device)
    return {layer: [b] for layer, b in crops.cut_examples(worker.model(), layers, batches, list(chunk.requests), patch).items()}
