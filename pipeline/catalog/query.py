"""Reading a catalog for people: filtered unit tables (`query`) and a manifest summary (`describe`)."""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from catalog_schema import Catalog
from pipeline.catalog.search import label_matches, synonyms_by_label
from pipeline.errors import UserError

SHOWN = ["layer", "unit", "act_mean", "act_max", "frac_active", "dead", "label", "category", "iou",
         "interpretable", "shapley", "shapley_ci_low", "shapley_ci_high", "featvis_activation"]


def query_units(catalog: Catalog, layer: str | None = None, label: str | None = None, min_iou: float | None = None,
                sort: str | None = None, ascending: bool = False, limit: int | None = None,
                category: str | None = None) -> pd.DataFrame:
    """Units filtered by layer, label text (case-insensitive substring of the concept's name or of one of its
    synonyms), category and IoU, sorted (descending by default)."""
    units = catalog.units()
    categories = set(units["category"].dropna())
    if layer is not None:
        _check_layer(catalog, layer, "--layer")
        units = units[units["layer"] == layer]
    if label is not None:
        units = units[label_matches(units["label"], label, synonyms_by_label(catalog))]
    if category is not None:
        known = sorted(categories | set(catalog.concepts()["category"].dropna()))
        if category not in known:
            raise UserError(f"--category {category!r}: the catalog's concept categories are {', '.join(known) or 'none'} "
                            "(a catalog without dissection results has none).")
        units = units[units["category"] == category]
    if min_iou is not None:
        units = units[units["iou"].fillna(-1.0) >= min_iou]
    if sort is not None:
        if sort not in units.columns:
            raise UserError(f"--sort {sort!r} is not a column of units.parquet; columns: {', '.join(units.columns)}.")
        units = units.sort_values([sort, "layer", "unit"], ascending=[ascending, True, True], na_position="last", kind="stable")
    if limit is not None:
        units = units.head(limit)
    return units.reset_index(drop=True)


NEIGHBOUR_COLUMNS = ["other_layer", "other_unit", "kind", "rank", "score", "label", "category", "iou", "act_max", "dead"]


def similar_to(catalog: Catalog, spec: str) -> pd.DataFrame:
    """The neighbours of the unit `spec` ("layer:unit") found by the similarity stage, with what the catalog says
    of each (label, IoU, maximum activation)."""
    layer, unit = _unit(catalog, spec, "--similar-to")
    if "similarity" not in catalog.manifest["stages_done"]:
        raise UserError(f"catalog {catalog.path} has no similarity results: add a [stages.similarity] table to the job "
                        "(or run it with --stages similarity) and run it again.")
    near = catalog.similar(layer, unit)
    units = catalog.units()[["layer", "unit", "label", "category", "iou", "act_max", "dead"]]
    near = near.merge(units.rename(columns={"layer": "other_layer", "unit": "other_unit"}), how="left",
                      on=["other_layer", "other_unit"])
    return near.iloc[neighbour_order(near, catalog.layers)][NEIGHBOUR_COLUMNS].reset_index(drop=True)


CONNECTION_COLUMNS = ["other_layer", "other_unit", "weight", "rank", "label", "category", "iou", "act_max", "dead"]


def connected_to(catalog: Catalog, spec: str, direction: str) -> pd.DataFrame:
    """The strongest inputs (`direction` "input") or outputs ("output") of the unit `spec` ("layer:unit") found by
    the connections stage, excitatory first (strongest first), then inhibitory, with what the catalog says of each."""
    option = f"--{direction}s-of"
    layer, unit = _unit(catalog, spec, option)
    if "connections" not in catalog.manifest["stages_done"]:
        raise UserError(f"catalog {catalog.path} has no connections: add a [stages.connections] table to the job "
                        "(or run it with --stages connections) and run it again.")
    rows = catalog.connections(layer, unit)
    rows = rows[rows["direction"] == direction]
    units = catalog.units()[["layer", "unit", "label", "category", "iou", "act_max", "dead"]]
    rows = rows.merge(units.rename(columns={"layer": "other_layer", "unit": "other_unit"}), how="left",
                      on=["other_layer", "other_unit"])
    order = np.lexsort([rows["rank"].to_numpy(), (rows["weight"] < 0).to_numpy()])
    return rows.iloc[order][CONNECTION_COLUMNS].reset_index(drop=True)


def _unit(catalog: Catalog, spec: str, option: str) -> tuple[str, int]:
    """(layer, unit) of "LAYER:UNIT", checked against the catalog."""
    layer, _, number = spec.rpartition(":")
    if not layer or not number.strip().isdigit():
        raise UserError(f"{option} {spec!r}: write the unit as LAYER:UNIT, e.g. {catalog.layers[0]}:0.")
    _check_layer(catalog, layer, option)
    count = next(int(info["units"]) for info in catalog.manifest["layers"] if info["name"] == layer)
    if int(number) >= count:
        raise UserError(f"{option} {spec}: layer {layer} has units 0..{count - 1}.")
    return layer, int(number)


def neighbour_order(near: pd.DataFrame, layers: list[str]):
    """Row order of a similar table: per unit its own layer first (by activation, then by weight), then the
    other layers in model order; nearest first within each."""
    position = {name: i for i, name in enumerate(layers)}
    keys = pd.DataFrame({"unit": near["unit"], "other": near["other_layer"] != near["layer"],
                         "kind": near["kind"] != "activation", "layer": near["other_layer"].map(position),
                         "rank": near["rank"]})
    return np.lexsort([keys[c].to_numpy() for c in ("rank", "layer", "kind", "other", "unit")])


def _check_layer(catalog: Catalog, layer: str, option: str) -> None:
    if layer not in catalog.layers:
        close = difflib.get_close_matches(layer, catalog.layers, n=3, cutoff=0.3)
        raise UserError(f"{option} {layer!r} is not in catalog {catalog.path}; closest: {', '.join(close) or 'none'} "
                        f"(all: {', '.join(catalog.layers)}).")


def format_units(units: pd.DataFrame, fmt: str, shown: list[str] = SHOWN) -> str:
    if fmt == "csv":
        return units.to_csv(index=False)
    if fmt == "json":
        return units.to_json(orient="records", indent=1)
    shown = [c for c in shown if c in units.columns and units[c].notna().any()]
    if units.empty:
        return "(no units match)"
    return units[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def interpretable_by_category(units: pd.DataFrame) -> pd.DataFrame:
    """Layers x categories: 'N (M)' = N interpretable units labelled with M distinct concepts."""
    hits = units[units["interpretable"].fillna(False).astype(bool)]
    if hits.empty:
        return pd.DataFrame()
    grouped = hits.groupby(["layer", "category"], sort=False).agg(units=("unit", "size"), concepts=("label", "nunique"))
    cells = grouped["units"].astype(str) + " (" + grouped["concepts"].astype(str) + ")"
    order = list(dict.fromkeys(units["layer"]))
    return cells.unstack("category", fill_value="0 (0)").reindex([l for l in order if l in set(hits["layer"])])

