"""What the similarity stage puts in the catalog: similar.parquet and the manifest's similarity section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.draft import ManifestPart
from pipeline.stages.similarity.settings import SimilaritySettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft
    from pipeline.stages.similarity.results import SimilarityResult


def write_similarity(draft: Draft, settings: SimilaritySettings, result: SimilarityResult) -> ManifestPart:
    columns: dict[str, list[np.ndarray]] = {c: [] for c in ("layer", "unit", "other_layer", "other_unit", "kind",
                                                             "score", "rank")}
    for c in result.comparisons:
        index, score = result.neighbours[c]
        unit, rank = np.nonzero(index >= 0)
        n = len(unit)
        for name, values in (("layer", np.full(n, c.layer, object)), ("unit", unit), ("other_layer", np.full(n, c.other, object)),
                             ("other_unit", index[unit, rank]), ("kind", np.full(n, c.kind, object)),
                             ("score", score[unit, rank]), ("rank", rank)):
            columns[name].append(values)
    draft.table("similar", {name: np.concatenate(parts) for name, parts in columns.items()})
    layers: dict[str, dict] = {}
    for (layer, kind), n in result.without.items():
        layers.setdefault(layer, {})[f"{kind}_without_neighbours"] = n
    section = {
        "probe_images": result.probe_images,
        "comparisons": [{"layer": c.layer, "other_layer": c.other, "kind": c.kind} for c in result.comparisons],
        "layers": layers,
    }
    return ManifestPart({"similarity": section}, asdict(settings))
