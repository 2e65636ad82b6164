"""The connections stage: each unit's strongest inputs in the cataloged layer before it and outputs in the one after,
by expanded weights (expanded.py), excitatory and inhibitory; one task per pair of consecutive layers."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.inputs.features import source_of
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.layouts import native_map
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.connections.expanded import expanded_weights, linearized
from pipeline.stages.connections.settings import ConnectionsSettings
from pipeline.stages.connections.write import write_connections
from pipeline.stages.protocol import Context, Driver, LayerInputs, Shared, Stage, Worker

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan

Pair = tuple[LayerInfo, LayerInfo]  # (earlier, later)


class ConnectionsStage(Stage[ConnectionsSettings, tuple, dict]):
    name = "connections"
    not_for_generators = "its expanded weights start from an input image; not built for a latent input yet"
    Settings = ConnectionsSettings
    needs = (ActivationsStage,)  # the connections are read at the earlier layer's mean activation map
    reasons = {"earlier": "the weights of the layer before it changed"}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> tuple[Pair, ...]:
        """Every two consecutive cataloged layers (a dictionary's features are left out: they read their layer
        through a hook the linearized copy does not keep)."""
        layers = [info for info in plan.layers if source_of(info.name) is None]
        return tuple(zip(layers, layers[1:]))

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp, settings = plan.fingerprints, json_fingerprint(asdict(self.settings(plan.job)))
        return {later.name: {"layer": fp["layers"][later.name], "data": fp["data"], "settings": settings,
                             "earlier": fp["layers"][earlier.name]} for earlier, later in self.part(plan)}

    def run(self, ctx: Context[ConnectionsSettings, tuple, dict], driver: Driver) -> dict:
        """(earlier, later) -> float64 [later units, earlier units], for the pairs whose later layer depends on the
        earlier one."""
        maps = ctx.result_of(ActivationsStage).layers
        points = {info.name: _point(info, maps[info.name]) for pair in ctx.part for info in pair}
        prep = ctx.plan.prep
        shared = driver.share((points, (len(ctx.plan.job.model.mean), prep.input_size, prep.input_size)))
        found = driver.map(pair_weights, list(ctx.part), shared)
        return {(a.name, b.name): w for (a, b), w in zip(ctx.part, found) if w is not None}

    def write(self, draft: Draft, ctx: Context[ConnectionsSettings, tuple, dict], result: dict) -> ManifestPart:
        return write_connections(draft, ctx.settings, result)


def _point(info: LayerInfo, activations: Any) -> torch.Tensor:
    """The layer's mean activation map, one image's output in its own layout."""
    return native_map(torch.from_numpy(activations.mean_map.reshape(info.shape)),
                      torch.from_numpy(activations.prefix_mean), info.layout, info.windows)


def pair_weights(worker: Worker, pair: Pair, shared: Shared) -> np.ndarray | None:
    """On an actor: the expanded weights from the earlier layer of `pair` to the later one."""
    points, input_shape = worker.get(shared)
    model = worker.memo("connections", shared, lambda _s: linearized(worker.model()))
    earlier, later = pair
    return expanded_weights(model, earlier, later, points[earlier.name], input_shape)
