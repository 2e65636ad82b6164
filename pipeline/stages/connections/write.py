"""What the connections stage puts in the catalog: connections.parquet and the manifest's connections section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.draft import ManifestPart
from pipeline.stages.connections.expanded import strongest
from pipeline.stages.connections.settings import ConnectionsSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft


def write_connections(draft: Draft, settings: ConnectionsSettings, result: dict) -> ManifestPart:
    columns: dict[str, list] = {c: [] for c in ("layer", "unit", "direction", "other_layer", "other_unit", "weight",
                                                 "rank")}
    for (earlier, later), weights in result.items():
        for layer, other, direction, matrix in ((later, earlier, "input", weights), (earlier, later, "output", weights.T)):
            for unit, other_unit, weight, rank in strongest(matrix, settings.top):
                for key, value in zip(columns, (layer, unit, direction, other, other_unit, weight, rank)):
                    columns[key].append(value)
    draft.table("connections", {key: np.asarray(values, dtype=object if key in ("layer", "direction", "other_layer")
                                                else None) for key, values in columns.items()})
    section = {"pairs": [{"earlier": a, "later": b} for a, b in result]}
    return ManifestPart({"connections": section}, asdict(settings))
