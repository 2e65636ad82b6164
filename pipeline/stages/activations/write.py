"""What the activations stage puts in the catalog: the units, examples and spectrum tables' rows, the images table,
the example and spectrum crops, heat maps, mean maps and probes, and the manifest's layers, data and summary."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

import catalog_schema as cs
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.activations.settings import ActivationsSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft
    from pipeline.inputs.models import LayerInfo
    from pipeline.stages.activations.crops import CropBatch
    from pipeline.plan import RunPlan
    from pipeline.stages.activations.results import ActivationsResult


def write_activations(draft: Draft, plan: RunPlan, result: ActivationsResult, settings: ActivationsSettings) -> ManifestPart:
    names = [info.name for info in plan.layers]
    layers = result.layers
    draft.units.update({c: np.concatenate([layers[n].units[c] for n in names]) for c in layers[names[0]].units})
    draft.table("examples", {c: np.concatenate([layers[n].examples[c] for n in names]) for c in layers[names[0]].examples})
    draft.table("images", _image_columns(plan, result.skipped))
    spectrum = settings.spectrum_quantiles > 0
    if spectrum:
        parts = [layers[n].spectrum for n in names if layers[n].spectrum]
        draft.table("spectrum", {c: np.concatenate([p[c] for p in parts]) for c in cs.TABLES["spectrum"].names}
                    if parts else cs.TABLES["spectrum"].empty_table())
    paths = {r.image_id: r.path for r in plan.images.records}
    for info in plan.layers:
        if info.name in result.reused:
            for kind in (cs.EXAMPLES, cs.HEATMAPS):
                draft.copy_array(result.previous.path, kind, info.name)
            if spectrum and result.previous.has_array(cs.SPECTRUM.group, info.name):
                draft.copy_array(result.previous.path, cs.SPECTRUM, info.name)
        else:
            _write_crops(draft, info, result.crops.get(info.name, []), settings)
        res = layers[info.name]
        draft.array(cs.MEAN_MAPS, info.name, res.mean_map)
        draft.array(cs.PROBES, info.name, res.probe, {"image_ids": [int(i) for i in res.probe_ids],
                                                       "paths": [paths[int(i)] for i in res.probe_ids]})
        if info.prefix:
            draft.array(cs.PREFIX_TOKENS, info.name, res.prefix, {"image_ids": [int(i) for i in res.prefix_ids]})
    return ManifestPart(_manifest_sections(plan, draft.units, result.skipped), asdict(settings))


def _write_crops(draft: Draft, info: LayerInfo, batches: list[CropBatch], settings: ActivationsSettings) -> None:
    """examples/, heatmaps/ and (with a spectrum) spectrum/ arrays of a computed layer; spectrum slots start at 2k."""
    k, patch, slots = settings.k, settings.patch_size, settings.spectrum_quantiles * settings.spectrum_k
    pics = np.zeros((info.units, 2 * k + slots, patch, patch, 3), np.uint8)
    heat = np.zeros((info.units, 2 * k, patch, patch), np.uint8)
    for batch in batches:
        pics[batch.unit, batch.slot] = batch.crops if batch.crops.shape[-1] == 3 else batch.crops.repeat(3, axis=-1)
        examples = batch.slot < 2 * k
        heat[batch.unit[examples], batch.slot[examples]] = batch.heat[examples]
    draft.array(cs.EXAMPLES, info.name, pics[:, :2 * k])
    draft.array(cs.HEATMAPS, info.name, heat)
    if slots:
        draft.array(cs.SPECTRUM, info.name, pics[:, 2 * k:])


def _image_columns(plan: RunPlan, skipped: list[tuple[int, str]]) -> dict[str, list]:
    reasons = dict(skipped)
    recs = plan.images.records
    return {
        "image_id": [r.image_id for r in recs], "path": [r.path for r in recs], "label": [r.label for r in recs],
        "label_index": [r.label_index for r in recs], "skipped": [r.image_id in reasons for r in recs],
        "skip_reason": [reasons.get(r.image_id) for r in recs],
    }


def _manifest_sections(plan: RunPlan, units: dict[str, np.ndarray], skipped: list[tuple[int, str]]) -> dict[str, Any]:
    paths = {r.image_id: r.path for r in plan.images.records}
    dead = units["dead"].astype(bool)
    layers = []
    for info in plan.layers:
        rf = plan.fields[info.name]
        in_layer = units["layer"] == info.name
        layers.append({
            "name": info.name, "units": info.units, "shape": list(info.shape), "layout": info.layout,
            "prefix_tokens": info.prefix,
            "dead_units": int(dead[in_layer].sum()),
            "receptive_field": {"jump": list(rf.jump), "offset": list(rf.offset), "size": list(rf.size),
                                "whole_image": rf.whole_image, "exact": rf.exact, "around_peak": rf.around_peak},
        })
    return {
        "layers": layers,
        "data": {
            "root": str(plan.images.root), "classes": list(plan.images.classes),
            "images": len(plan.images.records), "used": len(plan.images.records) - len(skipped),
            "skipped": [{"image_id": i, "path": paths[i], "reason": why} for i, why in skipped],
        },
        "summary": {"layers": len(plan.layers), "units": int(len(dead)), "dead_units": int(dead.sum()),
                    "nonfinite_units": int((np.asarray(units["nonfinite"]) > 0).sum())},
    }
