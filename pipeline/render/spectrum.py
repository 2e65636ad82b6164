"""The activation spectrum strip of a unit page (Distill, "Investigating a single neuron"): from the image optimized
to inhibit the unit, through its minimum, the dataset examples at evenly spaced quantiles of its spatial maxima and
its maximum, to the image optimized to excite it.

Each quantile is labelled relative to the unit by the sign of its value v (the empirical quantile of the unit's
spatial maxima): "positive" when v >= act_max / 2, "slightly positive" when 0 < v < act_max / 2, "negative" when
v <= act_min / 2, "slightly negative" when act_min / 2 < v < 0, and "zero" when v == 0 (common after a ReLU).
act_max and act_min are the unit's largest and smallest activation anywhere over the data set.

Pictures (beside the unit's other pictures): img/<layer>/<unit>-q<i>.jpg, the crops of level i in one row;
<unit>-min.jpg and <unit>-max.jpg, the crops of the bottom and top example of rank 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

import pipeline.render.pictures as pictures
from catalog_schema import Catalog


def sign_label(value: float, act_max: float, act_min: float) -> str:
    """'negative' | 'slightly negative' | 'zero' | 'slightly positive' | 'positive' (see the module doc)."""
    if not math.isfinite(value) or value == 0:
        return "zero"
    if value > 0:
        return "positive" if math.isfinite(act_max) and value >= act_max / 2 else "slightly positive"
    return "negative" if math.isfinite(act_min) and value <= act_min / 2 else "slightly negative"


def levels_of(rows: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
    """(level index, its rows by rank) of one unit's spectrum rows, lowest quantile first."""
    ordered = rows.sort_values("rank")
    return [(i, group) for i, (_, group) in enumerate(ordered.groupby("quantile", sort=True))]


def spectrum_pictures(catalog: Catalog, layer: str, start: int, stop: int, examples: np.ndarray, out: Path) -> int:
    """Write the strip's pictures of units start..stop of a layer (`examples`: their example crops, top k then
    bottom k); the files written (none without a spectrum)."""
    rows = catalog.spectrum(layer)
    crops = catalog.spectrum_images(layer, slice(start, stop)) if len(rows) else None
    if crops is None:
        return 0
    k = examples.shape[1] // 2
    rows = rows[(rows["unit"] >= start) & (rows["unit"] < stop)]
    written = 0
    for unit, mine in rows.groupby("unit"):
        i = int(unit) - start
        for level, group in levels_of(mine):
            pictures.save(pictures.strip(crops[i, group["rank"].to_numpy()]), out / f"{unit}-q{level}.jpg")
        pictures.save(examples[i, k], out / f"{unit}-min.jpg")
        pictures.save(examples[i, 0], out / f"{unit}-max.jpg")
        written += 2 + mine["quantile"].nunique()
    return written


def spectrum_strips(catalog: Catalog, layer: str, slug: str, units: pd.DataFrame,
                    featvis_kinds: list[str]) -> dict[int, list[dict]]:
    """Per unit, the strip's items in order (each: kind, title, detail, src, alt); {} without a spectrum.
    `featvis_kinds`: the kind ('positive', 'negative', ...) of each stored visualization of the layer."""
    rows = catalog.spectrum(layer)
    if rows.empty or not catalog.has_array("spectrum", layer):
        return {}
    examples = catalog.examples(layer)
    first = examples[examples["rank"] == 0].set_index(["unit", "sign"])["activation"]
    stats = units.set_index("unit")
    out: dict[int, list[dict]] = {}
    for unit, mine in rows.groupby("unit"):
        u = int(unit)
        act_max, act_min = float(stats.at[u, "act_max"]), float(stats.at[u, "act_min"])
        items = _optimized(featvis_kinds, "negative", slug, u)
        items.append(_example("minimum", first.get((u, "bottom")), f"img/{slug}/{u}-min.jpg"))
        for level, group in levels_of(mine):
            value = group["quantile_value"].iloc[0]
            value = float(group["activation"].iloc[0] if pd.isna(value) else value)
            quantile = float(group["quantile"].iloc[0])
            items.append({"kind": "quantile", "title": sign_label(value, act_max, act_min), "quantile": f"{quantile:.4g}",
                          "detail": f"quantile {quantile:.4g}: {value:.4g}", "src": f"img/{slug}/{u}-q{level}.jpg",
                          "alt": f"{len(group)} examples nearest quantile {quantile:.4g} ({value:.4g})"})
        items.append(_example("maximum", first.get((u, "top")), f"img/{slug}/{u}-max.jpg"))
        items += _optimized(featvis_kinds, "positive", slug, u)
        out[u] = items
    return out


def _example(kind: str, activation: float | None, src: str) -> dict:
    detail = "" if activation is None or pd.isna(activation) else f"{float(activation):.4g}"
    return {"kind": kind, "title": kind, "quantile": None, "detail": detail, "src": src, "alt": f"the {kind} example"}


def _optimized(kinds: list[str], kind: str, slug: str, unit: int) -> list[dict]:
    """The featvis image of that kind (its first copy), if the layer has one."""
    if kind not in kinds:
        return []
    title = f"{kind} optimized"
    return [{"kind": title, "title": title, "quantile": None, "detail": "", "src": f"img/{slug}/{unit}-fv{kinds.index(kind)}.png",
             "alt": f"image optimized to {'excite' if kind == 'positive' else 'inhibit'} the unit"}]


def featvis_kinds(manifest: dict, views: int, fallback: tuple[str, ...]) -> list[str]:
    """The kind of each of a layer's `views` stored visualizations: the manifest's list, else by position."""
    kinds = list((manifest.get("featvis") or {}).get("views") or [])
    if len(kinds) != views:
        kinds = [fallback[v] if v < len(fallback) else f"view {v}" for v in range(views)]
    return kinds

