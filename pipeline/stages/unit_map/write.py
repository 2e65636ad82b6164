"""What the unit_map stage puts in the catalog: the units' map_x / map_y columns and the manifest's unit_map
section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from catalog_schema.layout import MAP_COLUMNS
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.unit_map.settings import MapSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft


def write_map(draft: Draft, settings: MapSettings, result: dict) -> ManifestPart:
    units = draft.units
    n = len(units["layer"])
    x, y = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    section = {}
    for layer, (layout, vectors) in result.items():
        rows = np.flatnonzero(units["layer"] == layer)
        order = np.asarray(units["unit"])[rows]
        x[rows], y[rows] = layout.xy[order, 0], layout.xy[order, 1]
        section[layer] = {"method": layout.method, "vectors": vectors,
                          "placed": int(np.isfinite(layout.xy[:, 0]).sum())}
    for column, values in zip(MAP_COLUMNS, (x, y)):
        units[column] = [None if np.isnan(v) else float(v) for v in values]
    return ManifestPart({"unit_map": section}, asdict(settings))
