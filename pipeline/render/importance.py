"""The site's importance views: the index's top units, ablation check and chart of important units by layer
(the Neuron Shapley paper's "distribution of important filters by layer"), and each player's per-class bars.

Only geometry and numbers are computed here; the templates write the SVG (every name goes through autoescaping).
Values come from `Catalog.importance()` (Shapley by TMC or MSR when it ran, else Banzhaf), so any estimator works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from catalog_schema import Catalog

TOP_SHARE = 0.10  # the chart's top N: this share of the players, at least 1
ESTIMATOR_NAMES = {"tmc": "Shapley (TMC)", "msr": "Shapley (MSR)", "banzhaf": "Banzhaf"}
BAR, GROUP_GAP, HEIGHT, COUNT_SPACE, LABEL_SPACE = 14, 12, 120, 14, 110
CLASS_BAR_WIDTH = 240


@dataclass(frozen=True)
class LayerBars:
    """One player layer's two bars: its units among the top N, and its units whose interval is above 0."""

    layer: str
    players: int
    top: int
    positive: int
    x: int
    top_height: int
    positive_height: int


@dataclass(frozen=True)
class LayerChart:
    width: int
    height: int
    baseline: int  # y of the bars' foot
    n: int  # the top N
    players: int
    estimator: str
    bars: list[LayerBars]


@dataclass(frozen=True)
class ClassBar:
    """One class's row on a unit page; the x positions are None when no evaluation image has the class."""

    class_index: int
    class_name: str
    text: str
    positive: bool
    x: float | None = None
    width: float | None = None
    whisker: tuple[float, float] | None = None
    zero: float | None = None


def estimator_name(estimator: str) -> str:
    """How the site names an estimator ('tmc' -> 'Shapley (TMC)')."""
    return ESTIMATOR_NAMES.get(estimator, estimator)


def first_estimator(catalog: Catalog, by_class: pd.DataFrame | None = None) -> str | None:
    """The run's first estimator (manifest shapley.estimators); an older catalog's: 'tmc' (Shapley only)."""
    listed = (catalog.manifest.get("shapley") or {}).get("estimators")
    if listed:
        return "tmc" if listed[0] in ("tmc", "shapley") else str(listed[0])
    if by_class is not None and not by_class.empty:
        return "tmc" if (by_class["estimator"] == "tmc").any() else str(by_class["estimator"].iloc[0])
    return "tmc" if "shapley" in catalog.manifest else None


def interval_level(catalog: Catalog) -> str:
    """The reported intervals' confidence, e.g. '95%'."""
    delta = (catalog.manifest.get("settings", {}).get("shapley") or {}).get("ci_delta", 0.05)
    return f"{1 - float(delta):.0%}"


def ranked(values: pd.DataFrame) -> pd.DataFrame:
    """Players by value, largest first (ties: layer, then unit), as the index's table lists them."""
    return values.sort_values(["value", "layer", "unit"], ascending=[False, True, True], na_position="last")


def top_n(players: int) -> int:
    """The chart's N: TOP_SHARE of the players, at least 1."""
    return max(1, int(players * TOP_SHARE))


def importance_context(catalog: Catalog, units: pd.DataFrame, slug: dict[str, str]) -> dict:
    """The index page's importance section: the top 20 units, the ablation check, the chart by layer."""
    context = {"shapley": [], "shapley_metric": "", "importance_name": "", "ablation": [], "ablation_methods": [],
               "importance_chart": None, "importance_level": interval_level(catalog)}
    values = catalog.importance()
    if values.empty:
        return context
    labels = units.set_index(["layer", "unit"])["label"]
    context["shapley"] = [{**row, "href": f"units/{slug[row['layer']]}/{int(row['unit'])}.html",
                           "label": _label(labels.get((row["layer"], row["unit"])))}
                          for row in ranked(values).head(20).to_dict("records")]
    context["shapley_metric"] = str(values["metric"].iloc[0])
    context["importance_name"] = estimator_name(str(values["estimator"].iloc[0]))
    context["importance_chart"] = layer_chart(values, catalog.layers)
    ablation = catalog.shapley_ablation()
    if not ablation.empty:
        table = ablation.pivot(index="n", columns="method", values="value")
        context["ablation_methods"] = list(table.columns)
        context["ablation"] = [(int(n), [float(v) for v in row]) for n, row in table.iterrows()]
    return context


def layer_chart(values: pd.DataFrame, layer_order: list[str]) -> LayerChart | None:
    """Per player layer (in the model's order): its units among the top N by value, and its units with
    ci_low > 0. None when there are no values."""
    if values.empty:
        return None
    n = top_n(len(values))
    top = ranked(values).head(n)
    layers = [name for name in layer_order if (values["layer"] == name).any()]
    layers += [name for name in dict.fromkeys(values["layer"]) if name not in layers]
    counts = [(name, int((values["layer"] == name).sum()), int((top["layer"] == name).sum()),
               int(((values["layer"] == name) & (values["ci_low"] > 0)).sum())) for name in layers]
    most = max(1, *(max(t, p) for _, _, t, p in counts))
    bars = [LayerBars(name, players, t, p, GROUP_GAP + i * (2 * BAR + GROUP_GAP),
                      round(HEIGHT * t / most), round(HEIGHT * p / most))
            for i, (name, players, t, p) in enumerate(counts)]
    label_space = min(LABEL_SPACE, 16 + 6 * max(len(f"{b.layer} ({b.players})") for b in bars))
    return LayerChart(GROUP_GAP + len(bars) * (2 * BAR + GROUP_GAP), COUNT_SPACE + HEIGHT + label_space,
                      COUNT_SPACE + HEIGHT, n, len(values), str(values["estimator"].iloc[0]), bars)


def class_bars(catalog: Catalog, layer: str) -> dict[int, dict]:
    """Each player unit of `layer`: its per-class values of the run's first estimator, as one bar per class
    with its interval (read once per layer). Empty when the catalog has no per-class table."""
    table = catalog.importance_by_class(layer)
    estimator = first_estimator(catalog, table)
    table = table[table["estimator"] == estimator] if not table.empty else table
    if table.empty:
        return {}
    head = {"estimator": estimator_name(str(estimator)), "metric": str(table["metric"].iloc[0]),
            "level": interval_level(catalog)}
    return {int(unit): {**head, "rows": _unit_rows(rows.sort_values("class"))} for unit, rows in table.groupby("unit")}


def _label(v) -> str:
    return v if isinstance(v, str) else ""


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _unit_rows(rows: pd.DataFrame) -> list[ClassBar]:
    """One ClassBar per class, on a scale shared by the unit's classes that always includes 0."""
    records = rows.to_dict("records")
    ends = [float(r[k]) for r in records for k in ("value", "ci_low", "ci_high") if _finite(r[k])] + [0.0]
    lo, hi = min(ends), max(ends)
    span = hi - lo or 1.0

    def x(v: float) -> float:
        return round((v - lo) / span * CLASS_BAR_WIDTH, 1)

    out = []
    for r in records:
        name = str(r["class_name"]) if _finite(r["class_name"]) else f"class {int(r['class'])}"
        if not _finite(r["value"]):
            out.append(ClassBar(int(r["class"]), name, "no evaluation image of this class", False))
            continue
        value, low, high = float(r["value"]), r["ci_low"], r["ci_high"]
        has_interval = _finite(low) and _finite(high)
        text = f"{value:.4g}" + (f" [{float(low):.4g}, {float(high):.4g}]" if has_interval else "")
        out.append(ClassBar(int(r["class"]), name, text, bool(has_interval and float(low) > 0),
                            min(x(0.0), x(value)), abs(x(value) - x(0.0)),
                            (x(float(low)), x(float(high))) if has_interval else None, x(0.0)))
    return out
