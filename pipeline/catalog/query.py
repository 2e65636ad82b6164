"""Reading a catalog for people: filtered unit tables (`query`) and a manifest summary (`describe`)."""

from __future__ import annotations

import difflib

import pandas as pd

from catalog_schema import Catalog
from pipeline.errors import UserError

SHOWN = ["layer", "unit", "act_mean", "act_max", "frac_active", "dead", "label", "category", "iou",
         "interpretable", "shapley", "shapley_ci_low", "shapley_ci_high", "featvis_activation"]


def query_units(catalog: Catalog, layer: str | None = None, label: str | None = None, min_iou: float | None = None,
                sort: str | None = None, ascending: bool = False, limit: int | None = None) -> pd.DataFrame:
    """Units filtered by layer, label text (case-insensitive substring) and IoU, sorted (descending by default)."""
    units = catalog.units()
    if layer is not None:
        if layer not in catalog.layers:
            close = difflib.get_close_matches(layer, catalog.layers, n=3, cutoff=0.3)
            raise UserError(f"--layer {layer!r} is not in catalog {catalog.path}; closest: {', '.join(close) or 'none'} "
                            f"(all: {', '.join(catalog.layers)}).")
        units = units[units["layer"] == layer]
    if label is not None:
        units = units[units["label"].fillna("").str.contains(label, case=False, regex=False)]
    if min_iou is not None:
        units = units[units["iou"].fillna(-1.0) >= min_iou]
    if sort is not None:
        if sort not in units.columns:
            raise UserError(f"--sort {sort!r} is not a column of units.parquet; columns: {', '.join(units.columns)}.")
        units = units.sort_values([sort, "layer", "unit"], ascending=[ascending, True, True], na_position="last", kind="stable")
    if limit is not None:
        units = units.head(limit)
    return units.reset_index(drop=True)


def format_units(units: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return units.to_csv(index=False)
    if fmt == "json":
        return units.to_json(orient="records", indent=1)
    shown = [c for c in SHOWN if c in units.columns and units[c].notna().any()]
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

