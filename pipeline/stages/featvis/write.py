"""What the featvis stage puts in the catalog: featvis/<layer> images, per unit the reached objective, its ratio
to the unit's dataset maximum and the flat flag, the projections, the input filters, the manifest's featvis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import catalog_schema as cs
from catalog_schema.layout import FEATVIS_COLUMNS
from pipeline.catalog.draft import ManifestPart

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft
    from pipeline.plan import RunPlan
    from pipeline.stages.featvis.optimize import FeatvisChunk
    from pipeline.stages.featvis.results import FeatvisPart, FeatvisResult


def write_featvis(draft: Draft, plan: RunPlan, result: FeatvisResult, part: FeatvisPart) -> ManifestPart:
    units = draft.units
    _rendered(draft, result.rendered)
    _reused(draft, result)
    for name, images in part.filters.items():
        draft.array(cs.WEIGHTS, name, images)
    k, patch = result.projection_shape
    for info in plan.layers_to_compute("featvis") if k else ():  # k = 0: a generator's, without projections
        views = np.full((info.units, k, 2, patch, patch, 3), 128, np.uint8)
        for batch in result.projected.get(info.name, []):
            views[batch.unit, batch.rank] = batch.images
        draft.array(cs.PROJECTIONS, info.name, views)
    order = [info.name for info in plan.layers]
    section = {"views": [kind for kind, _ in part.settings.views()], "size": part.settings.size,
               "layers": sorted({task.layer for task in part.tasks}, key=order.index),
               "flat_units": int(np.nansum(np.asarray(units["featvis_flat"], dtype=float))),
               "projections_caveat": part.projection_caveat}
    return ManifestPart({"featvis": section}, part.settings.described())


def _rendered(draft: Draft, rendered: dict[int, FeatvisChunk]) -> None:
    """featvis/<layer> arrays of the computed layers, and their units' columns (None elsewhere)."""
    units = draft.units
    by_layer: dict[str, list[FeatvisChunk]] = {}
    for index in sorted(rendered):
        by_layer.setdefault(rendered[index].layer, []).append(rendered[index])
    n = len(units["layer"])
    objective, ratio, flat = [None] * n, [None] * n, [None] * n
    row = {(layer, int(unit)): i for i, (layer, unit) in enumerate(zip(units["layer"], units["unit"]))}
    for layer, chunks in by_layer.items():
        draft.array(cs.FEATVIS, layer, np.concatenate([c.images for c in chunks]))
        for chunk in chunks:
            for j, unit in enumerate(chunk.units):
                i = row[(layer, int(unit))]
                best = float(units["act_max"][i])
                objective[i] = float(chunk.objective[j])
                ratio[i] = float(chunk.peak[j]) / best if best > 0 else None
                flat[i] = bool(chunk.flat[j])
    units["featvis_activation"], units["featvis_ratio"], units["featvis_flat"] = objective, ratio, flat


def _reused(draft: Draft, result: FeatvisResult) -> None:
    """Visualizations and projections of layers whose featvis inputs did not change, as the previous run made them."""
    units = draft.units
    for layer, columns in result.reused.items():
        rows = np.flatnonzero(units["layer"] == layer)
        for column in FEATVIS_COLUMNS:
            values = list(units[column])
            for i, value in zip(rows, columns[column]):
                values[i] = value
            units[column] = values
        draft.copy_array(result.previous.path, cs.PROJECTIONS, layer)
        if result.previous.has_array(cs.FEATVIS.group, layer):
            draft.copy_array(result.previous.path, cs.FEATVIS, layer)
