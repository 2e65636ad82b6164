"""What the site shows of units in relation: each unit's nearest units as a strip of their thumbnails (from the
similarity stage), a dictionary's links between its features and the layer's neurons, and the static search
index the index page's search box reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from catalog_schema import Catalog
from catalog_schema.layout import feature_layer, source_of
from pipeline.catalog.query import neighbour_order
from pipeline.catalog.search import search_index

SEARCH_INDEX = "search-index.js"  # a script, not a .json file: browsers refuse to fetch() a file:// URL


def neighbour_strips(catalog: Catalog, layer: str, slug: dict[str, str]) -> dict[int, list[dict]]:
    """unit -> one strip per (compared layer, kind): its neighbours' cards, nearest first (empty without the stage)."""
    near = catalog.similar(layer)
    near = near.iloc[neighbour_order(near, catalog.layers)]
    out: dict[int, list[dict]] = {}
    for (unit, other, kind), rows in near.groupby(["unit", "other_layer", "kind"], sort=False):
        measure = "activation correlation" if kind == "activation" else "weight cosine"
        out.setdefault(int(unit), []).append({
            "title": f"nearest in {other} by {measure}",
            "units": [{"layer": other, "unit": int(u), "score": f"{s:.3f}",
                       "href": f"../{slug[other]}/{int(u)}.html", "picture": f"img/{slug[other]}/{int(u)}-card.jpg"}
                      for u, s in zip(rows["other_unit"], rows["score"])]})
    return out


DICTIONARY_LINKS = 8  # neurons a feature reads most, features that write to a neuron most


def dictionary_strips(catalog: Catalog, layer: str, slug: dict[str, str]) -> dict[int, list[dict]]:
    """unit -> its dictionary links: a feature's page, the neurons it reads most (largest encoder weights); a
    neuron's page, the features that write to it most (largest decoder weights). Empty without a dictionary."""
    source = source_of(layer)
    if source is None and feature_layer(layer) not in slug:
        return {}
    if not catalog.has_array("dictionary_decoder", source or layer):
        return {}
    d = catalog.dictionary(source or layer)
    if source is not None:
        weights, other, title = d["encoder"], source, f"reads most: the neurons of {source} with its largest encoder weights"
    else:
        weights, other = d["decoder"].T, feature_layer(layer)
        title = f"written by: the features of {other} with the largest decoder weights on this neuron"
    out = {}
    for unit, row in enumerate(weights):
        best = np.argsort(-row, kind="stable")[:DICTIONARY_LINKS]
        out[unit] = [{"title": title, "units": [{"layer": other, "unit": int(u), "score": f"{row[u]:.3f}",
                                                 "href": f"../{slug[other]}/{int(u)}.html",
                                                 "picture": f"img/{slug[other]}/{int(u)}-card.jpg"} for u in best]}]
    return out


def connection_strips(catalog: Catalog, layer: str, slug: dict[str, str]) -> dict[int, list[dict]]:
    """unit -> its connections (the connections stage): the units that excite it and inhibit it in the layer before,
    those it excites and inhibits in the layer after, strongest first. Empty without the stage."""
    rows = catalog.connections(layer)
    out: dict[int, list[dict]] = {}
    titles = {("input", True): "excited by", ("input", False): "inhibited by", ("output", True): "excites",
              ("output", False): "inhibits"}
    for (unit, direction, excites), group in rows.groupby(["unit", "direction", rows["weight"] > 0], sort=True):
        other = group["other_layer"].iloc[0]
        group = group.sort_values("rank")
        out.setdefault(int(unit), []).append({
            "title": f"{titles[(direction, bool(excites))]}: units of {other} (expanded weight)",
            "units": [{"layer": other, "unit": int(u), "score": f"{w:+.3f}", "href": f"../{slug[other]}/{int(u)}.html",
                       "picture": f"img/{slug[other]}/{int(u)}-card.jpg"}
                      for u, w in zip(group["other_unit"], group["weight"])]})
    for strips in out.values():  # inputs before outputs, excitatory before inhibitory
        strips.sort(key=lambda strip: list(titles.values()).index(strip["title"].split(":")[0]))
    return out


def write_search_index(catalog: Catalog, units: pd.DataFrame, slug: dict[str, str], site: Path) -> bool:
    """static/search-index.js for the index page's search box; False (nothing written) when no unit has a label."""
    index = search_index(catalog, units, slug)
    if not index["units"]:
        return False
    text = json.dumps(index, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    (site / "static" / SEARCH_INDEX).write_text(f"window.NEURON_CATALOG_SEARCH = {text};\n", encoding="utf-8")
    return True
