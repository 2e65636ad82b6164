"""`neuron-catalog describe`: the few lines a person reads to know what a catalog holds."""

from __future__ import annotations

import json

import pandas as pd

from catalog_schema import Catalog
from pipeline.catalog.comparison import neurons_and_features
from pipeline.catalog.query import interpretable_by_category

ESTIMATOR_NAMES = {"tmc": "Shapley", "msr": "Shapley", "banzhaf": "Banzhaf"}
CLASS_LINES = 30  # classes listed one a line; the rest are counted


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
    lines += _run_lines(m)
    lines.append("")
    lines.append(_layer_table(m, units))
    lines.append("")
    lines += _unit_lines(m, units)
    spectrum = m.get("settings", {}).get("activations", {})
    if spectrum.get("spectrum_quantiles"):
        lines.append(f"spectrum     examples at {spectrum['spectrum_quantiles']} quantiles of each unit's spatial maxima, "
                     f"{spectrum['spectrum_k']} each (spectrum.parquet, Catalog.spectrum)")
    if "concepts" in m:
        lines += _concept_lines(m)
    if "shapley" in m:
        lines += ["", *_shapley_lines(catalog, m["shapley"], m["settings"]["shapley"])]
    if "similarity" in m:
        lines += ["", _similarity_line(m)]
    if "dictionary" in m:
        lines += ["", *_dictionary_lines(catalog)]
    lines += _context_lines(catalog, m, units)
    for item in data["skipped"][:5]:
        lines.append(f"skipped      {item['path']}: {item['reason']}")
    left_out = m.get("layers_left_out") or []  # catalogs written before it have no such key
    if left_out:
        lines.append(f"left out     {len(left_out)} module(s) of the default selection, units not read (manifest "
                     "'layers_left_out'):")
        lines += [f"             {item['why']}" for item in left_out[:5]]
    if len(data["skipped"]) > 5:
        lines.append(f"skipped      ... and {len(data['skipped']) - 5} more (see manifest.json)")
    return "\n".join(lines)


def _dictionary_lines(catalog: Catalog) -> list[str]:
    """Each layer's sparse dictionary: its size, sparsity and how well it reconstructs the layer."""
    table = catalog.dictionary_quality()[["layer", "features", "k", "explained_variance", "mean_l0", "dead_fraction",
                                          "dense_fraction", "stability"]]
    lines = ["dictionaries (sparse, TopK; dictionary_quality.parquet, Catalog.dictionary; features are the layers "
             "'<layer>..features'):", table.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    compared = neurons_and_features(catalog.units(), table["layer"].tolist())
    if len(compared):
        lines += ["neurons vs features (dissection: interpretable = IoU >= threshold; purity = mean share of an "
                  "interpretable unit's 10 top concept images that carry its concept):",
                  compared.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return lines


def _context_lines(catalog: Catalog, m: dict, units: pd.DataFrame) -> list[str]:
    """The map, class pages and attribution stages, a line each."""
    lines = []
    if "unit_map" in m:
        methods = sorted({v["method"] for v in m["unit_map"].values()})
        lines.append(f"map          {len(m['unit_map'])} layer(s) laid out ({', '.join(methods)}), "
                     f"{units['map_x'].notna().sum()} of {len(units)} units placed (units map_x, map_y)")
    if "class_pages" in m:
        c, info = catalog.classes(), m["class_pages"]
        ibd = (f"; IBD leaves {100 * c['ibd_residual'].mean():.0f}% of a class vector unexplained on average"
               if info.get("ibd") else "; no concept data set: no IBD")
        lines.append(f"classes      {len(c)} pages, Grad-CAM on {info['layer']}: accuracy "
                     f"{100 * c['accuracy'].min():.0f}-{100 * c['accuracy'].max():.0f}%{ibd} (classes.parquet)")
    if "attribution" in m:
        verdicts: dict[str, list[bool]] = {}
        for layer in m["attribution"]["layers"].values():
            for method, v in layer["sanity"].items():
                verdicts.setdefault(method, []).append(v["passes"])
        checked = ", ".join(f"{method} passes at {sum(v)} of {len(v)}" for method, v in sorted(verdicts.items()))
        lines.append(f"attribution  {len(m['attribution']['layers'])} layer(s); model-randomization check (layers): "
                     f"{checked or 'not run'}")
    lines += _generator_lines(catalog, m)
    return [""] + lines if lines else []


def _generator_lines(catalog: Catalog, m: dict) -> list[str]:
    """A generator's sample, and what its interventions removed and drew, per layer."""
    sample = (m.get("prepared") or {}).get("generated_sample")
    if not sample:
        return []
    z = m["job"]["latents"]
    lines = [f"generator    {sample['images']} images of {sample['size']} px from {z['distribution']} latents "
             f"{list(z['shape'])} (seed {z['seed']}), at {sample['path']}; concepts by {m['job']['concepts']['segmenter']}"]
    table = catalog.interventions()
    for layer, rows in table.groupby("layer", sort=False):
        top, n = rows[rows["units_from"] == "top"], 0
        cells = []
        for kind, word in (("ablate", "removes"), ("insert", "draws")):
            mine = rows[rows["intervention"] == kind]
            n = int(mine["n"].max())
            at = lambda source: mine[(mine["units_from"] == source) & (mine["n"] == min(5, n))]["fraction"].mean()  # noqa: E731
            cells.append(f"top {min(5, n)} units {word} {100 * at('top'):.0f}% (random {100 * at('random'):.0f}%)")
        lines.append(f"intervene    {layer}: {top['concept'].nunique()} concepts; " + ", ".join(cells)
                     + " on average (generator_interventions.parquet)")
    return lines


def _run_lines(m: dict) -> list[str]:
    """Where the run's time went, and what a re-analysis reused."""
    lines = []
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
    return lines


def _layer_table(m: dict, units: pd.DataFrame) -> str:
    table = []
    for layer in m["layers"]:
        rows = units[units["layer"] == layer["name"]]
        rf = layer["receptive_field"]
        prefix = layer.get("prefix_tokens", 0)
        row = {"layer": layer["name"], "units": layer["units"], "shape": "x".join(map(str, layer["shape"])),
               "layout": layer.get("layout", "nchw") + (f"+{prefix}" if prefix else ""),
               "dead": int(rows["dead"].sum()), "act_max(median)": float(rows["act_max"].median()) if len(rows) else float("nan"),
               "rf": "whole image" if rf["whole_image"] else f"{rf['size'][0]}px" + (" around peak" if rf.get("around_peak") else "")}
        if rows["interpretable"].notna().any():
            row["interpretable"] = int(rows["interpretable"].fillna(False).sum())
            row["concepts"] = int(rows.loc[rows["interpretable"].fillna(False), "label"].nunique())
        table.append(row)
    return pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _unit_lines(m: dict, units: pd.DataFrame) -> list[str]:
    """Units with non-finite activations, interpretable units per category, the totals."""
    lines = []
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
    return lines


def _concept_lines(m: dict) -> list[str]:
    c, settings = m["concepts"], m["settings"]["dissection"]
    lines = [f"concepts     {c['root']}: {c['labels']} labels in {', '.join(c['categories'])}; "
             f"{c['used']} of {c['images']} images used; "
             + ("IQR threshold rule" if settings.get("threshold") == "iqr" else f"quantile {settings['quantile']}") + ", "
             f"interpretable at IoU >= {settings['iou_threshold']}"]
    for column, why in c.get("ignored_columns", {}).items():
        lines.append(f"ignored      index.csv column {column!r}: {why}")
    for note in c.get("ignored_rows", [])[:5]:
        lines.append(f"ignored      {note}")
    for item in c["skipped"][:5]:
        lines.append(f"skipped      {item['image']}: {item['reason']}")
    return lines


def _similarity_line(m: dict) -> str:
    info, settings = m["similarity"], m["settings"]["similarity"]
    kinds = sorted({(c["other_layer"] == c["layer"], c["kind"]) for c in info["comparisons"]},
                   key=lambda k: (not k[0], k[1] != "activation"))
    shown = ", ".join(f"{'same layer' if same else 'adjacent layers'} by {kind}" for same, kind in kinds)
    return (f"similarity   {settings['neighbours']} nearest units each ({shown}) on {info['probe_images']} probe images; "
            f"query CATALOG --similar-to LAYER:UNIT")


def _shapley_lines(catalog: Catalog, info: dict, settings: dict) -> list[str]:
    """The players, each estimator's cost, the top units, the per-class values and the ablation check."""
    target = f", class {settings['target_class']}" if settings["target_class"] >= 0 else ""
    estimators = [("tmc" if e == "shapley" else e) for e in info.get("estimators") or ["tmc"]]
    lines = [f"importance   {settings['metric']}{target} on {info['eval_images']} images: {info['players']} players in "
             f"{', '.join(info['layers'])}; V(all) {info['v_all']:.4g}, V(none) {info['v_none']:.4g}",
             "estimators   " + "; ".join(_estimator_cost(e, info) for e in estimators)]
    if info.get("warm_start"):
        lines.append(f"warm start   {json.dumps(info['warm_start'], sort_keys=True, default=str)}")
    values = catalog.importance()
    if not values.empty:
        estimator = str(values["estimator"].iloc[0])
        lines.append(f"top units by {ESTIMATOR_NAMES.get(estimator, estimator)} value ({estimator}; interval at "
                     f"{1 - settings['ci_delta']:.0%}):")
        lines.append(_ranked(values).head(10)[["layer", "unit", "value", "ci_low", "ci_high", "samples"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"))
    lines += _class_lines(catalog, info, estimators[0])
    ablation = catalog.shapley_ablation()
    if not ablation.empty:
        lines.append("metric after removing N units (the paper's check):")
        lines.append(ablation.pivot(index="n", columns="method", values="value").to_string(float_format=lambda v: f"{v:.4g}"))
        chosen = ablation[(ablation["method"] != "random") & (ablation["n"] <= 5)].sort_values("n").groupby("method").last()
        for method, row in chosen.iterrows():
            lines.append(f"  {method}, N = {row['n']}: {row['units']}")
    return lines


def _estimator_cost(estimator: str, info: dict) -> str:
    """What one estimator spent: TMC's permutations, rounds and evaluations, MSR's and Banzhaf's sampled coalitions."""
    if estimator == "tmc":
        d = info.get("tmc") or info  # an older catalog: the TMC keys at the top of the section
        return (f"tmc (Shapley): {d.get('permutations', '?')} permutations in {d.get('rounds', '?')} rounds, "
                f"{d.get('evaluations', '?')} evaluations")
    if estimator == "msr":
        d = info.get("msr") or {}
        return (f"msr (Shapley): {d.get('samples', '?')} sampled coalitions, surrogate-adjusted "
                f"({d.get('bootstrap', '?')} bootstrap resamplings)")
    if estimator == "banzhaf":
        d = info.get("banzhaf") or {}
        return (f"banzhaf: {d.get('samples', '?')} sampled coalitions (keep {d.get('keep', '?')}, "
                f"{d.get('bootstrap', '?')} bootstrap resamplings)")
    return estimator


def _ranked(values: pd.DataFrame) -> pd.DataFrame:
    return values.sort_values(["value", "layer", "unit"], ascending=[False, True, True], na_position="last")


def _class_lines(catalog: Catalog, info: dict, estimator: str) -> list[str]:
    """Per class: its top 3 units by value and how many are important for it (interval above 0: ci_low > 0);
    then how many units are important for exactly one class. Empty for a catalog without per-class values."""
    table = catalog.importance_by_class()
    table = table[table["estimator"] == estimator]
    if table.empty:
        return []
    v_all, v_none = info.get("v_all_by_class") or [], info.get("v_none_by_class") or []
    groups = list(table.groupby("class", sort=True))
    labels = {c: f"{c} {g['class_name'].iloc[0]}" for c, g in groups}
    width = max(map(len, labels.values()))
    lines = [f"per class ({estimator}; important = interval above 0; top 3 units by value):"]
    for c, group in groups[:CLASS_LINES]:
        top = _ranked(group.dropna(subset=["value"])).head(3)
        shown = ", ".join(f"{r.layer}:{r.unit} {r.value:.4g}" for r in top.itertuples()) or "no evaluation image"
        v = f"V(all) {_number(v_all, c)}, V(none) {_number(v_none, c)}"
        lines.append(f"  {labels[c]:<{width}}  {v}  {int((group['ci_low'] > 0).sum())} important  top {shown}")
    if len(groups) > CLASS_LINES:
        lines.append(f"  ... and {len(groups) - CLASS_LINES} more classes (Catalog.importance_by_class() reads them all)")
    important = table[table["ci_low"] > 0]
    per_unit = important.groupby(["layer", "unit"])["class_name"].agg(list)
    one = per_unit[per_unit.map(len) == 1]
    players = len(table[["layer", "unit"]].drop_duplicates())
    named = ", ".join(f"{layer}:{unit} {names[0]}" for (layer, unit), names in one.head(10).items())
    lines.append(f"important for one class only: {len(one)} of {players} units"
                 + (f" ({named}{', ...' if len(one) > 10 else ''})" if len(one) else "")
                 + f"; for two or more: {int((per_unit.map(len) > 1).sum())}; for none: {players - len(per_unit)}")
    return lines


def _number(values: list, i: int) -> str:
    return f"{values[i]:.4g}" if i < len(values) and values[i] is not None else "-"
