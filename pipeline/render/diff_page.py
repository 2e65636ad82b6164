"""The site's diff page: how the catalog's units changed since an earlier catalog (`render --diff`)."""

from __future__ import annotations

import math

import pandas as pd


def diff_context(units: pd.DataFrame, old_name: str, slug: dict[str, str]) -> dict:
    """Template values: a summary row per layer and every compared unit, changed units first."""
    layers = []
    for layer, rows in units.groupby("layer", sort=False):
        layers.append({"name": layer, "href": f"layers/{slug[layer]}.html" if layer in slug else None,
                       "units": len(rows), "matched_by": ", ".join(sorted(set(rows["matched_by"].dropna()))),
                       "changed": int(rows["changed"].sum()), "median_corr": format_number(rows["activation_corr"].median()),
                       "label_changes": int(rows["label_changed"].fillna(False).astype(bool).sum())})
    ordered = units.assign(_order=~units["changed"].astype(bool)).sort_values(
        ["_order", "activation_corr", "layer", "unit"], na_position="first", kind="stable")
    rows = []
    for r in ordered.to_dict("records"):
        unit = None if is_missing(r["unit"]) else int(r["unit"])
        rows.append({
            "layer": r["layer"], "unit": unit, "old_unit": None if is_missing(r["old_unit"]) else int(r["old_unit"]),
            "href": f"units/{slug[r['layer']]}/{unit}.html" if unit is not None and r["layer"] in slug else None,
            "changed": bool(r["changed"]), "reasons": _text(r["reasons"]),
            "corr": format_number(r["activation_corr"]), "label_old": _text(r["label_old"]), "label_new": _text(r["label_new"]),
            "iou_delta": format_number(r["iou_delta"]), "shapley_delta": format_number(r["shapley_delta"]),
            "rank": (f"{int(r['shapley_rank_old'])} → {int(r['shapley_rank_new'])}"
                     if not is_missing(r["shapley_rank_old"]) and not is_missing(r["shapley_rank_new"]) else ""),
            "jaccard": format_number(r["top_jaccard"]),
        })
    return {"old_name": old_name, "diff_layers": layers, "diff_rows": rows,
            "changed_total": sum(r["changed"] for r in rows), "compared_total": len(rows)}


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _text(v) -> str:
    return "" if is_missing(v) else str(v)


def format_number(v) -> str:
    return "" if is_missing(v) else f"{float(v):.3f}"
