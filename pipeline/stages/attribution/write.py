"""What the attribution stage puts in the catalog: per layer the maps of each unit's top examples and its empirical
receptive field (arrays), the units' erf_size and rf_size columns, and the manifest's attribution section with the
sanity check's verdicts."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

import catalog_schema as cs
from catalog_schema.layout import ATTRIBUTION_COLUMNS
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.attribution.compute import CHECKED
from pipeline.stages.attribution.occlusion import empirical_size
from pipeline.stages.attribution.sanity import MAX_CORRELATION
from pipeline.stages.attribution.settings import AttributionSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft


def write_attribution(draft: Draft, settings: AttributionSettings, part: dict, result: dict) -> ManifestPart:
    units = draft.units
    n = len(units["layer"])
    erf, rf = [None] * n, [None] * n
    row = {(layer, int(u)): i for i, (layer, u) in enumerate(zip(units["layer"], units["unit"]))}
    section = {}
    e = result["examples"]
    for layer, batches in result["batches"].items():
        count, patch = result["units"][layer], batches[0].maps.shape[-1]
        maps = np.zeros((count, e, 3, patch, patch), np.uint8)
        sums, seen = np.zeros((count, patch, patch), np.float64), np.zeros(count, np.int64)
        correlations: dict[str, list[np.ndarray]] = {m: [] for m in CHECKED}
        for b in batches:
            maps[b.unit, b.rank] = b.maps
            np.add.at(sums, b.unit, b.windows)
            np.add.at(seen, b.unit, 1)
            for m in CHECKED:
                correlations[m].append(b.correlations[m])
        mean = sums / np.maximum(seen, 1)[:, None, None]
        side = result["fields"][layer]
        draft.array(cs.ATTRIBUTION, layer, maps)
        top = mean.max(axis=(1, 2), keepdims=True)
        draft.array(cs.EMPIRICAL_FIELDS, layer, np.where(top > 0, 255 * np.clip(mean, 0, None) / np.where(top > 0, top, 1), 0)
                    .round().astype(np.uint8))
        for u in np.flatnonzero(seen):
            erf[row[(layer, int(u))]] = empirical_size(mean[u]) * side / patch
            rf[row[(layer, int(u))]] = side
        section[layer] = {"gradcam_layer": part[layer].name if part[layer] is not None else None,
                          "sanity": _verdicts(correlations)}
    for column, values in zip(ATTRIBUTION_COLUMNS, (erf, rf)):
        units[column] = values
    _reused(draft, result.get("reused"), section)
    section = {layer: section[layer] for layer in part if layer in section}  # in model order, reused or not
    side, stride = result["occluder"]
    return ManifestPart({"attribution": {"layers": section, "examples": e, "occluder": side, "stride": stride,
                                         "max_correlation": MAX_CORRELATION}}, asdict(settings))


def _reused(draft: Draft, reused: dict | None, section: dict) -> None:
    """Layers whose inputs did not change: the previous catalog's arrays, columns and verdicts, as they were."""
    if not reused:
        return
    units = draft.units
    for layer, found in reused["layers"].items():
        rows = np.flatnonzero(units["layer"] == layer)
        for column, values in found["columns"].items():
            merged = list(units[column])
            for i, value in zip(rows, values):
                merged[i] = value
            units[column] = merged
        for kind in (cs.ATTRIBUTION, cs.EMPIRICAL_FIELDS):
            draft.copy_array(reused["previous"].path, kind, layer)
        section[layer] = found["section"]


def _verdicts(correlations: dict[str, list[np.ndarray]]) -> dict[str, dict]:
    """method -> {rank_correlation (mean over the checked examples), passes, examples}; absent where not computed."""
    out = {}
    for method, parts in correlations.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        values = values[np.isfinite(values)]
        if len(values):
            mean = float(values.mean())
            out[method] = {"rank_correlation": round(mean, 6), "passes": bool(mean < MAX_CORRELATION),
                           "examples": int(len(values))}
    return out
