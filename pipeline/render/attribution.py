"""The unit pages' attribution views (the attribution stage): each top example's saliency, Grad-CAM and occlusion
maps laid over its crop, the empirical receptive field beside the theoretical one, and the sanity check's verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import pipeline.render.pictures as pictures
from catalog_schema import Catalog

METHODS = ("saliency", "gradcam", "occlusion")
NAMES = {"saliency": "gradient saliency", "gradcam": "Grad-CAM", "occlusion": "occlusion",
         "deconvnet": "deconvnet", "guided": "guided backpropagation"}
FIELD_SIDE = 96  # pixels of the empirical field's picture


def attribution_pictures(catalog: Catalog, layer: str, start: int, stop: int, crops: np.ndarray, out: Path) -> int:
    """Files written for units start..stop: a strip per method (maps over the examples' crops), the empirical field."""
    if not catalog.has_array("attribution", layer):
        return 0
    maps, fields = catalog.attribution(layer, slice(start, stop))
    written, shown = 0, _methods(catalog, layer)
    for i in range(stop - start):
        examples = maps.shape[1]
        for m, method in enumerate(METHODS):
            if method in shown:
                pictures.save(pictures.strip(np.stack([pictures.jet_overlay(c, h) for c, h in
                                                        zip(crops[i, :examples], maps[i, :, m])])),
                              out / f"{start + i}-{method}.jpg")
                written += 1
        field = pictures.jet_overlay(np.full((*fields[i].shape, 3), 255, np.uint8), fields[i])
        pictures.save(pictures.enlarge(field, FIELD_SIDE), out / f"{start + i}-erf.png")
        written += 1
    return written


def attribution_views(catalog: Catalog, layer: str, rows: list[dict], slug: str) -> dict[int, dict]:
    """unit -> what its page shows of the attribution stage (empty without it)."""
    section = (catalog.manifest.get("attribution") or {}).get("layers", {}).get(layer)
    if section is None:
        return {}
    maps = catalog.attribution(layer, slice(0, 1))[0]
    verdicts = [{"method": NAMES[m], "correlation": v["rank_correlation"], "passes": v["passes"]}
                for m, v in section["sanity"].items()]
    out = {}
    for row in rows:
        u = int(row["unit"])
        out[u] = {"strips": [(NAMES[m], f"img/{slug}/{u}-{m}.jpg") for m in _methods(catalog, layer)], "examples": maps.shape[1],
                  "field": f"img/{slug}/{u}-erf.png", "erf": _size(row.get("erf_size")), "rf": _size(row.get("rf_size")),
                  "gradcam_layer": section["gradcam_layer"], "verdicts": verdicts,
                  "threshold": catalog.manifest["attribution"]["max_correlation"]}
    return out


def _methods(catalog: Catalog, layer: str) -> list[str]:
    """The maps a layer has: Grad-CAM only where a cataloged layer lies before it."""
    section = catalog.manifest["attribution"]["layers"][layer]
    return [m for m in METHODS if m != "gradcam" or section["gradcam_layer"]]


def _size(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
