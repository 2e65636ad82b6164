"""The activations stage: per unit statistics, top and bottom dataset examples with their crops, the activation
spectrum (examples at evenly spaced quantiles, with their crops), mean maps, probes.

Every other stage builds on it, so every run makes it (and every catalog has its units table).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

import catalog_schema as cs
from catalog_schema import Catalog
from pipeline.errors import UserError
from pipeline.inputs.batches import global_batches, iter_batches
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.images import ImageRecord
from pipeline.inputs.models import LayerInfo
from pipeline.plan import Shard
from pipeline.stages.activations import compute, crops
from pipeline.stages.activations.crops import CropRequest
from pipeline.stages.activations.reuse import read_layer, read_skipped
from pipeline.stages.activations.results import ActivationsResult
from pipeline.stages.activations.settings import ActivationsSettings
from pipeline.stages.activations.spectrum import spectrum_bytes
from pipeline.stages.activations.write import write_activations
from pipeline.stages.image_chunks import ImageChunk, image_chunks, merge_by_layer
from pipeline.stages.protocol import Context, Driver, LayerInputs, Stage, Worker

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan


@dataclass(frozen=True)
class ActivationsPart:
    k: int  # top and bottom examples kept per unit
    patch: int  # pixels of the stored crops (and of the featvis projections)
    probe_ids: frozenset[int]  # images whose per-unit mean activation is kept for `diff`
    spectrum: tuple[int, int] = (0, 0)  # (quantiles, examples per quantile); quantiles 0: no spectrum


class ActivationsStage(Stage[ActivationsSettings, ActivationsPart, ActivationsResult]):
    name = "activations"
    generators = True
    Settings = ActivationsSettings
    needs = ()
    arrays = (cs.EXAMPLES, cs.HEATMAPS, cs.MEAN_MAPS, cs.PROBES)  # not SPECTRUM: absent where spectrum_quantiles = 0
    reasons = {"spectrum": "the activation spectrum's settings changed (or the previous catalog has no spectrum)"}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> ActivationsPart:
        s = self.settings(plan.job)
        if s.spectrum_quantiles:
            check_spectrum_memory(plan, s)
        return ActivationsPart(s.k, s.patch_size, probe_sample(plan.images.records, s.probe_images),
                               (s.spectrum_quantiles, s.spectrum_k))

    def inputs(self, plan: RunPlan) -> LayerInputs:
        """The spectrum's settings are an input of this stage alone (and none where it is off, so that layers of a
        catalog written before the spectrum existed are reused by a run without one)."""
        fp, acts, s = plan.fingerprints, settings_hash(plan), self.settings(plan.job)
        extra = {"spectrum": json_fingerprint([s.spectrum_quantiles, s.spectrum_k])} if s.spectrum_quantiles else {}
        return {info.name: {"layer": fp["layers"][info.name], "data": fp["data"], "settings": acts, **extra}
                for info in plan.layers}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> ActivationsResult:
        units = previous.arrow("units")
        return ActivationsResult({name: read_layer(previous, units, name) for name in layers}, {}, read_skipped(previous),
                                 set(layers), previous)

    def run(self, ctx: Context[ActivationsSettings, ActivationsPart, ActivationsResult],
            driver: Driver) -> ActivationsResult:
        plan, part = ctx.plan, ctx.part
        out = ctx.reused or ActivationsResult({}, {}, [])
        out.k, out.patch = part.k, part.patch
        patch = part.patch
        if plan.layers_to_compute(self.name):
            out.skipped = statistics(plan, driver, part, out.layers)
        requests = crop_requests(plan, out.layers, part.k)
        asked = [info for info in plan.layers if info.name in {req.layer for req in requests}]
        chunks = image_chunks(plan.images.records, requests, plan.prep.batch_size)
        out.crops = driver.fan_out("crops", "example crops", chunks, chunk_crops, lambda _total: (asked, patch),
                                   merge_by_layer, {})
        return out

    def write(self, draft: Draft, ctx: Context[ActivationsSettings, ActivationsPart, ActivationsResult],
              result: ActivationsResult) -> ManifestPart:
        return write_activations(draft, ctx.plan, result, ctx.settings)


def settings_hash(plan: RunPlan) -> str:
    """What every layer's activations depend on besides its weights and the data (also an input of later stages);
    not the spectrum's settings, which only this stage's results depend on."""
    job = plan.job
    return json_fingerprint({"activations": ActivationsStage().settings(job).without_spectrum(), "prep": asdict(plan.prep),
                             "seed": job.seed, "limit": job.data.limit})


def probe_sample(records: tuple[ImageRecord, ...] | list[ImageRecord], n: int) -> frozenset[int]:
    """Image ids of the probe set: the `n` images whose paths hash lowest. It depends on paths only, so two
    catalogs of one data set probe the same images, and an image that stays keeps its place when others change."""
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.path.encode()).digest())
    return frozenset(r.image_id for r in ranked[:n])


def statistics(plan: RunPlan, driver: Driver, part: ActivationsPart, out: dict[str, compute.LayerResult]) -> list[tuple[int, str]]:
    """The statistics pass over every shard, finalized into `out` layer by layer (each layer's per-image maxima freed
    as soon as its spectrum is chosen); the images that could not be read."""
    layers = plan.layers_to_compute(ActivationsStage.name)
    k, probe_ids, spectrum = part.k, part.probe_ids, part.spectrum[0] > 0
    partial = driver.fan_out("activations", "activations", plan.shards, shard_statistics,
                             lambda _total: (layers, k, probe_ids, spectrum), compute.merge, compute.empty(layers, k))
    if partial.images == 0:
        raise UserError(f"data.images {plan.images.root}: none of its {len(plan.images.records)} files could "
                        f"be read as an image (first: {partial.skipped[0][1] if partial.skipped else '?'}). "
                        "Point it at image files.")
    for info in layers:
        out[info.name] = compute.finalize(partial, info, plan.fields[info.name], plan.input_hw, part.spectrum)
        del partial.layers[info.name]
    return partial.skipped


def check_spectrum_memory(plan: RunPlan, s: ActivationsSettings) -> None:
    """Refuse, before any work, a spectrum whose per-image maxima would take more than spectrum_memory_mb."""
    need = sum(spectrum_bytes(len(plan.images.records), info.units, info.spatial[0] * info.spatial[1])
               for info in plan.layers)
    if need > s.spectrum_memory_mb * 2**20:
        raise UserError(f"job key 'stages.activations.spectrum_memory_mb': the activation spectrum keeps every image's "
                        f"spatial max per unit, {need / 2**20:.0f} MiB for {len(plan.images.records)} images and "
                        f"{sum(i.units for i in plan.layers)} units, more than the {s.spectrum_memory_mb} MiB allowed. "
                        "Raise spectrum_memory_mb, set spectrum_quantiles = 0 (no spectrum), or use fewer images "
                        "(data.limit) or layers.")


def crop_requests(plan: RunPlan, layers: dict[str, compute.LayerResult], k: int) -> list[CropRequest]:
    """One request per example row of the computed layers (and per spectrum row, in slots from 2k on): where to cut
    it and which activation counts as full heat."""
    requests = []
    for info in plan.layers_to_compute("activations"):
        res = layers[info.name]
        vmax, vmin = res.units["act_max"], res.units["act_min"]
        for table, spectrum in ((res.examples, False), (res.spectrum, True)):
            for i in range(len(table.get("unit", ()))):
                unit, top = int(table["unit"][i]), spectrum or table["sign"][i] == "top"
                box = (int(table["box_y0"][i]), int(table["box_x0"][i]), int(table["box_y1"][i]), int(table["box_x1"][i]))
                slot = int(table["rank"][i]) + (2 * k if spectrum else 0 if top else k)
                requests.append(CropRequest(info.name, unit, slot, int(table["image_id"][i]), box,
                                            float(vmax[unit] if top else vmin[unit])))
    return requests


def shard_statistics(worker: Worker, shard: Shard, layers: list[LayerInfo], k: int, probe_ids: frozenset[int],
                     spectrum: bool = False) -> compute.ActivationsPartial:
    """On an actor: one shard's partial statistics and examples (`spectrum`: and every image's maxima)."""
    skipped: list[tuple[int, str]] = []
    batches = iter_batches(worker.root, global_batches(shard.records, worker.prep.batch_size), worker.prep, skipped,
                           worker.device)
    partial = compute.compute(worker.model(), layers, batches, k, probe_ids, spectrum)
    partial.skipped = sorted(skipped)
    return partial


def chunk_crops(worker: Worker, chunk: ImageChunk, layers: list[LayerInfo], patch: int) -> dict[str, list[crops.CropBatch]]:
    """On an actor: the crops and heat maps asked of one chunk of images."""
    batches = iter_batches(worker.root, [list(chunk.records)], worker.prep, [], worker.device)
    return {layer: [b] for layer, b in crops.cut_examples(worker.model(), layers, batches, list(chunk.requests), patch).items()}
