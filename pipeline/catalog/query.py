"""Reading a catalog for people: filtered unit tables (`query`) and a manifest summary (`describe`)."""

from __future__ import annotations

import difflib
from pathlib import Path

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


def describe(catalog: Catalog) -> str:
    """A few lines a person reads to know what a catalog holds."""
    m = catalog.manifest
    units = catalog.units()
    data = m["data"]
    lines = [
        f"catalog      {catalog.path}",
        f"schema       v{m['schema_version']}, run {m['run_id'][:12]}, {m['started']} -> {m['finished']}",
        f"model        {m.get('model', {}).get('kind', '?')} {m.get('model', {}).get('name', '?')}"
        f" (input {m.get('model', {}).get('input_size', '?')}px), fingerprint {m['fingerprints']['model'][:12]}",
        f"data         {data['root']}: {data['images']} files, {data['used']} used, {len(data['skipped'])} skipped"
        + (f", {len(data['classes'])} classes" if data.get("classes") else ""),
        f"stages done  {', '.join(m['stages_done'])}",
    ]
    if m.get("wall_seconds"):
        lines.append("wall time    " + ", ".join(f"{t['step']} {t['seconds']:.1f} s" for t in m["wall_seconds"])
                     + " (before writing the catalog)")
    reuse = m.get("reuse") or {}
    if reuse.get("previous"):
        done = [(stage, layer, r) for stage, layers in reuse["stages"].items() for layer, r in layers.items()]
        computed = [f"{stage} {layer}" if layer != "*" else stage for stage, layer, r in done if r["action"] == "computed"]
        lines.append(f"re-analysis  of {reuse['previous']} (run {str(reuse['previous_run_id'])[:12]}): "
                     f"{len(done) - len(computed)} of {len(done)} (stage, layer) results reused; computed: "
                     f"{', '.join(computed) or 'nothing'}")
    lines.append("")
    table = []
    for layer in m["layers"]:
        rows = units[units["layer"] == layer["name"]]
        row = {"layer": layer["name"], "units": layer["units"], "shape": "x".join(map(str, layer["shape"])),
               "dead": int(rows["dead"].sum()), "act_max(median)": float(rows["act_max"].median()) if len(rows) else float("nan"),
               "rf": "whole image" if layer["receptive_field"]["whole_image"] else f"{layer['receptive_field']['size'][0]}px"}
        if rows["interpretable"].notna().any():
            row["interpretable"] = int(rows["interpretable"].fillna(False).sum())
            row["concepts"] = int(rows.loc[rows["interpretable"].fillna(False), "label"].nunique())
        table.append(row)
    lines.append(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    lines.append("")
    if "nonfinite" in units and (units["nonfinite"].fillna(0) > 0).any():
        bad = units[units["nonfinite"].fillna(0) > 0]
        names = ", ".join(f"{r.layer}:{r.unit} ({int(r.nonfinite)})" for r in bad.head(10).itertuples())
        lines += [f"units with NaN or infinite activations (read as 0 in their statistics): {len(bad)}: {names}"
                  + (" ..." if len(bad) > 10 else ""), ""]
    by_category = interpretable_by_category(units)
    if not by_category.empty:
        lines.append("interpretable units (unique concepts) per layer and category:")
        lines.append(by_category.to_string())
        lines.append("")
    lines.append(f"total        {len(units)} units in {len(m['layers'])} layers, {int(units['dead'].sum())} dead")
    if "concepts" in m:
        c, settings = m["concepts"], m["settings"]["dissection"]
        lines.append(f"concepts     {c['root']}: {c['labels']} labels in {', '.join(c['categories'])}; "
                     f"{c['used']} of {c['images']} images used; quantile {settings['quantile']}, "
                     f"interpretable at IoU >= {settings['iou_threshold']}")
        for column, why in c.get("ignored_columns", {}).items():
            lines.append(f"ignored      index.csv column {column!r}: {why}")
        for note in c.get("ignored_rows", [])[:5]:
            lines.append(f"ignored      {note}")
        for item in c["skipped"][:5]:
            lines.append(f"skipped      {item['image']}: {item['reason']}")
    if "shapley" in m:
        lines += ["", *_shapley_lines(catalog, m["shapley"], m["settings"]["shapley"])]
    for item in data["skipped"][:5]:
        lines.append(f"skipped      {item['path']}: {item['reason']}")
    if len(data["skipped"]) > 5:
        lines.append(f"skipped      ... and {len(data['skipped']) - 5} more (see manifest.json)")
    return "\n".join(lines)


def _shapley_lines(catalog: Catalog, info: dict, settings: dict) -> list[str]:
    """The players, the top units by Shapley value, and the ablation check."""
    target = f", class {settings['target_class']}" if settings["target_class"] >= 0 else ""
    lines = [f"shapley      {settings['metric']}{target} on {info['eval_images']} images: {info['players']} players in "
             f"{', '.join(info['layers'])}; V(all) {info['v_all']:.4g}, V(none) {info['v_none']:.4g}; "
             f"{info['permutations']} permutations in {info['rounds']} rounds, {info['evaluations']} evaluations",
             "top units by Shapley value (interval at "
             f"{1 - settings['ci_delta']:.0%}):"]
    top = catalog.shapley().sort_values(["value", "layer", "unit"], ascending=[False, True, True]).head(10)
    lines.append(top[["layer", "unit", "value", "ci_low", "ci_high", "samples"]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    ablation = catalog.shapley_ablation()
    if not ablation.empty:
        lines.append("metric after removing N units (the paper's check):")
        lines.append(ablation.pivot(index="n", columns="method", values="value").to_string(float_format=lambda v: f"{v:.4g}"))
        chosen = ablation[(ablation["method"] != "random") & (ablation["n"] <= 5)].sort_values("n").groupby("method").last()
        for method, row in chosen.iterrows():
            lines.append(f"  {method}, N = {row['n']}: {row['units']}")
    return lines


def interpretable_by_category(units: pd.DataFrame) -> pd.DataFrame:
    """Layers x categories: 'N (M)' = N interpretable units labelled with M distinct concepts."""
    hits = units[units["interpretable"].fillna(False).astype(bool)]
    if hits.empty:
        return pd.DataFrame()
    grouped = hits.groupby(["layer", "category"], sort=False).agg(units=("unit", "size"), concepts=("label", "nunique"))
    cells = grouped["units"].astype(str) + " (" + grouped["concepts"].astype(str) + ")"
    order = list(dict.fromkeys(units["layer"]))
    return cells.unstack("category", fill_value="0 (0)").reindex([l for l in order if l in set(hits["layer"])])


def open_catalog(path: Path) -> Catalog:
    from catalog_schema import CatalogError

    try:
        return Catalog.open(path)
    except CatalogError as exc:
        raise UserError(str(exc)) from None
