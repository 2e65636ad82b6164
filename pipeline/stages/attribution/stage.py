"""The attribution stage: for each unit's top examples, where in the image its maximum comes from, three ways
(gradient saliency, Grad-CAM on the cataloged layer before it, occlusion), the unit's empirical receptive field
(Zhou et al. 2015: its examples' occlusion maps averaged in the theoretical field, with its size), and the
model-randomization sanity check of each method (sanity.py). Requests grouped by image, like the crops."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from catalog_schema import Catalog
from catalog_schema.layout import ATTRIBUTION_COLUMNS
from catalog_schema.tables import from_table, rows_of_layer
from pipeline.inputs.features import source_of
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.models import LayerInfo, select_among
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.activations.stage import settings_hash as activations_hash
from pipeline.stages.attribution.compute import ChunkSettings, chunk_attribution
from pipeline.stages.attribution.settings import AttributionSettings
from pipeline.stages.attribution.write import write_attribution
from pipeline.stages.featvis.projections import top_example_requests
from pipeline.stages.image_chunks import image_chunks, merge_by_layer
from pipeline.stages.protocol import Context, Driver, LayerInputs, Stage

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan

SANITY_SEED_STREAM = 35  # beside the job's seed: the randomized model's own stream


class AttributionStage(Stage[AttributionSettings, dict, dict]):
    name = "attribution"
    not_for_generators = "its maps explain a classifier's input pixels, and a generator's input is a latent"
    Settings = AttributionSettings
    needs = (ActivationsStage,)  # the maps explain the units' top examples

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> dict[str, LayerInfo | None]:
        """Selected layer -> the cataloged layer before it (Grad-CAM's), None for the first."""
        cfg = self.settings(plan.job)
        names = [info.name for info in plan.layers]
        chosen = select_among(model, cfg.layers, names, "stages.attribution.layers") if cfg.layers else \
            [n for n in names if source_of(n) is None]
        neurons = [info for info in plan.layers if source_of(info.name) is None]
        out = {}
        for name in chosen:
            before = [info for info in neurons if names.index(info.name) < names.index(name)]
            out[name] = before[-1] if before else None
        return out

    def inputs(self, plan: RunPlan) -> LayerInputs:
        """A unit's maps depend on the layers up to it (its layer's fingerprint covers them) and its top examples; the
        randomized model's weights on the seed alone."""
        fp = plan.fingerprints
        settings = json_fingerprint({"attribution": asdict(self.settings(plan.job)), "activations": activations_hash(plan),
                                     "seed": plan.job.seed, "prep": asdict(plan.prep)})
        return {name: {"layer": fp["layers"][name], "data": fp["data"], "settings": settings} for name in self.part(plan)}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> dict:
        """The previous catalog's maps (copied when written), units columns and verdicts of `layers`."""
        units = previous.arrow("units")
        return {"previous": previous, "layers": {
            name: {"columns": {c: from_table(rows_of_layer(units, name).sort_by("unit"), c) for c in ATTRIBUTION_COLUMNS},
                   "section": previous.manifest["attribution"]["layers"][name]} for name in layers}}

    def run(self, ctx: Context[AttributionSettings, dict, dict], driver: Driver) -> dict:
        plan, cfg = ctx.plan, ctx.settings
        activations = ctx.result_of(ActivationsStage)
        todo = [info.name for info in plan.layers_to_compute(self.name) if info.name in ctx.part]
        layers = {name: activations.layers[name] for name in todo}
        requests = [r for r in top_example_requests(layers, todo) if r.rank < cfg.examples]
        infos = tuple(info for info in plan.layers if info.name in todo)
        side, stride = cfg.occlusion(plan.prep.input_size)
        checked = frozenset((info.name, int(u)) for info in infos
                            for u in np.unique(np.linspace(0, info.units - 1, min(info.units, cfg.sanity_units)).round()))
        shared = driver.share(ChunkSettings(infos, dict(ctx.part), {n: plan.fields[n] for n in ctx.part},
                                            activations.patch, side, stride,
                                            plan.job.seed * 1000 + SANITY_SEED_STREAM if cfg.sanity else None, checked))
        chunks = image_chunks(plan.images.records, requests, plan.prep.batch_size)
        found = driver.fan_out("attribution", "attribution maps", chunks, chunk_attribution, lambda _total: (shared,),
                               merge_by_layer, {})
        return {"batches": found, "units": {info.name: info.units for info in infos}, "reused": ctx.reused,
                "examples": min(cfg.examples, activations.k), "occluder": (side, stride), "fields": field_sides(plan, todo)}

    def write(self, draft: Draft, ctx: Context[AttributionSettings, dict, dict], result: dict) -> ManifestPart:
        return write_attribution(draft, ctx.settings, ctx.part, result)


def field_sides(plan: RunPlan, layers: list[str]) -> dict[str, float]:
    """Each layer's theoretical field side in input pixels (the mean of its height and width; the image's when whole)."""
    out = {}
    for name in layers:
        f = plan.fields[name]
        h, w = (plan.input_hw if f.whole_image or f.around_peak else f.size)
        out[name] = float(np.mean([h, w]))
    return out
