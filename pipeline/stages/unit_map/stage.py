"""The unit_map stage: per layer, a seeded 2-D layout of its units (layout.py) on the vectors the catalog already keeps:
a neuron's mean activations on the probe images (centred, scaled: nearby units correlate), a dictionary feature's
decoder direction. One task per layer."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torch import nn

from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.activations.stage import settings_hash as activations_hash
from pipeline.stages.protocol import Context, Driver, LayerInputs, Shared, Stage, Worker
from pipeline.stages.similarity.neighbours import correlation_rows, cosine_rows
from pipeline.stages.unit_map.layout import Layout, unit_layout
from pipeline.stages.unit_map.settings import MapSettings
from pipeline.stages.unit_map.write import write_map

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan

PROBES, DECODER = "probe activations", "decoder directions"


class MapStage(Stage[MapSettings, tuple, dict]):
    name = "unit_map"
    generators = True
    Settings = MapSettings
    needs = (ActivationsStage,)  # neurons are placed by their activations on the probe images

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> tuple[str, ...]:
        return tuple(info.name for info in plan.layers)

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp = plan.fingerprints
        settings = json_fingerprint({"map": asdict(self.settings(plan.job)), "activations": activations_hash(plan),
                                     "seed": plan.job.seed})
        return {name: {"layer": fp["layers"][name], "data": fp["data"], "settings": settings} for name in self.part(plan)}

    def run(self, ctx: Context[MapSettings, tuple, dict], driver: Driver) -> dict[str, tuple[Layout, str]]:
        """layer -> (its layout, the vectors it was made from)."""
        acts = ctx.result_of(ActivationsStage).layers
        vectors = {}
        for name in ctx.part:
            if name in ctx.added:
                vectors[name] = (cosine_rows(ctx.added[name].dictionary.decoder), DECODER)
            else:
                vectors[name] = (correlation_rows(acts[name].probe), PROBES)
        s = ctx.settings
        shared = driver.share({name: rows for name, (rows, _) in vectors.items()})
        found = driver.map(layer_layout, list(ctx.part), shared, s.method, s.neighbors, ctx.plan.job.seed)
        return {name: (layout, vectors[name][1]) for name, layout in zip(ctx.part, found)}

    def write(self, draft: Draft, ctx: Context[MapSettings, tuple, dict], result: dict) -> ManifestPart:
        return write_map(draft, ctx.settings, result)


def layer_layout(worker: Worker, layer: str, shared: Shared, method: str, neighbors: int, seed: int) -> Layout:
    """On an actor: one layer's layout."""
    rows = worker.get(shared)[layer]
    return unit_layout(rows.unit, rows.valid, method, neighbors, seed)
