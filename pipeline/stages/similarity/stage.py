"""The similarity stage: every unit's nearest units, in its own layer and the layers beside it.

Two measures, as Neuronpedia and "Convergent Learning" (Li et al., ICLR 2016) compare features: the Pearson
correlation of the units' mean activations on the probe images (stored by the activations stage), and,
within a layer, the cosine of the units' weights. Exact (every pair is scored), in blocks of query units
spread over the model actors.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.activations.stage import settings_hash as activations_hash
from pipeline.stages.protocol import Context, Driver, LayerInputs, Shared, Stage, Worker
from pipeline.stages.similarity.neighbours import Rows, correlation_rows, cosine_rows, nearest
from pipeline.stages.similarity.results import Block, Comparison, SimilarityResult
from pipeline.stages.similarity.settings import SimilaritySettings
from pipeline.stages.similarity.write import write_similarity

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan

ACTIVATION, WEIGHT = "activation", "weight"
BLOCK_UNITS = 2048  # query units per task


class SimilarityStage(Stage[SimilaritySettings, dict, SimilarityResult]):
    name = "similarity"
    generators = True
    Settings = SimilaritySettings
    needs = (ActivationsStage,)  # units are compared on their activations on the probe images

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> dict[str, np.ndarray]:
        """The weights [units, fan-in] of every selected layer that has weights of its own, one row per unit (a
        dictionary's features have their decoder rows, known once it is trained: `run` adds them)."""
        acts = ActivationsStage().settings(plan.job)
        if acts.probe_images < 3:
            raise UserError(f"stage 'similarity' correlates units on the probe images, but stages.activations.probe_images "
                            f"is {acts.probe_images}: set it to 3 or more (the default is 256).")
        modules = dict(model.named_modules())
        weights = {}
        for info in plan.layers:
            module = modules.get(info.name)
            weight = getattr(module, "weight", None)
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)  # its weight is [in, out, ...]
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2 and weight.shape[0] == info.units and not transposed:
                weights[info.name] = weight.detach().reshape(info.units, -1).float().cpu().numpy()
        return weights

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp = plan.fingerprints
        settings = json_fingerprint({"similarity": asdict(self.settings(plan.job)), "activations": activations_hash(plan)})
        return {info.name: {"layer": fp["layers"][info.name], "data": fp["data"], "settings": settings}
                for info in plan.layers}

    def run(self, ctx: Context[SimilaritySettings, dict, SimilarityResult], driver: Driver) -> SimilarityResult:
        plan, settings = ctx.plan, ctx.settings
        names = [info.name for info in plan.layers]
        decoders = {name: part.dictionary.decoder for name, part in ctx.added.items() if name in names}
        rows, probes = unit_rows(ctx.result_of(ActivationsStage).layers, {**ctx.part, **decoders}, names)
        comparisons = comparisons_of(names, settings, rows)
        sizes = {info.name: info.units for info in plan.layers}
        blocks = [Block(c, s, min(sizes[c.layer], s + BLOCK_UNITS)) for c in comparisons
                  for s in range(0, sizes[c.layer], BLOCK_UNITS)]
        shared = driver.share(rows)
        found = driver.map(block_neighbours, blocks, shared, settings.neighbours)
        neighbours = {c: (np.concatenate([f[0] for b, f in zip(blocks, found) if b.comparison == c]),
                          np.concatenate([f[1] for b, f in zip(blocks, found) if b.comparison == c])) for c in comparisons}
        without = {key: int((~r.valid).sum()) for key, r in rows.items()}
        return SimilarityResult(comparisons, neighbours, without, probes)

    def write(self, draft: Draft, ctx: Context[SimilaritySettings, dict, SimilarityResult],
              result: SimilarityResult) -> ManifestPart:
        return write_similarity(draft, ctx.settings, result)


def unit_rows(layers: dict[str, Any], weights: dict[str, np.ndarray], names: list[str]) -> tuple[dict[tuple[str, str], Rows], int]:
    """(layer, kind) -> the layer's units as unit vectors, on the probe images every layer holds; and their number."""
    shared = set.intersection(*(set(layers[n].probe_ids.tolist()) for n in names))
    if len(shared) < 3:
        raise UserError(f"stage 'similarity' needs the units' activations on 3 or more probe images, but only "
                        f"{len(shared)} were read: raise stages.activations.probe_images or add images to data.images.")
    ids = np.array(sorted(shared))
    rows = {}
    for name in names:
        res = layers[name]
        where = {int(i): j for j, i in enumerate(res.probe_ids)}
        rows[(name, ACTIVATION)] = correlation_rows(res.probe[:, [where[int(i)] for i in ids]])
        if name in weights:
            rows[(name, WEIGHT)] = cosine_rows(weights[name])
    return rows, len(ids)


def comparisons_of(names: list[str], settings: SimilaritySettings, rows: dict[tuple[str, str], Rows]) -> list[Comparison]:
    """Each layer against itself (activations, then weights), then against the layers before and after it."""
    out = []
    for i, name in enumerate(names):
        out.append(Comparison(name, name, ACTIVATION))
        if settings.weights and (name, WEIGHT) in rows:
            out.append(Comparison(name, name, WEIGHT))
        if settings.adjacent:
            out += [Comparison(name, names[j], ACTIVATION) for j in (i - 1, i + 1) if 0 <= j < len(names)]
    return out


def block_neighbours(worker: Worker, block: Block, shared: Shared, k: int) -> tuple[np.ndarray, np.ndarray]:
    """On an actor: the nearest candidates of one block of query units."""
    rows = worker.get(shared)
    c = block.comparison
    return nearest(rows[(c.layer, c.kind)], rows[(c.other, c.kind)], k, block.start, block.stop,
                   same=c.layer == c.other, device=worker.device)
