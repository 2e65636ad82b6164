"""A layer's map of units (the unit_map stage's map_x / map_y), as dots: coloured by the concept category of the unit's
dissection label (gray: no interpretable label), sized by importance (|Shapley|, else |Banzhaf|).

Only geometry is computed here; layer.html writes the SVG (names go through autoescaping) and site.js hides the dots
the page's label filter leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pipeline.render.chart import category_color

SIDE, MARGIN = 560, 14  # the square plot and the room kept for the largest dot
NO_CONCEPT = "#b8b8b8"
RADIUS, SMALL, LARGE = 4.0, 2.5, 11.0  # without importance; the smallest and largest sized dots


@dataclass(frozen=True)
class Dot:
    unit: int
    x: float
    y: float
    r: float
    color: str
    label: str  # the dissection label (what the page's filter matches, as on the cards), or ""
    title: str  # the dot's tooltip


@dataclass(frozen=True)
class UnitMap:
    side: int
    dots: list[Dot]
    legend: list[tuple[str, str]]  # (category or "no concept", colour)
    sized_by: str | None  # "Shapley" | "Banzhaf" | None
    unplaced: int  # units without a place (no vector: dead or constant)


def unit_map(rows: pd.DataFrame) -> UnitMap | None:
    """The dots of one layer's units; None when the catalog has no map of it."""
    if "map_x" not in rows or rows["map_x"].isna().all():
        return None
    placed = rows[rows["map_x"].notna()]
    importance, sized_by = _importance(placed)
    top = float(importance.abs().max()) if importance is not None else 0.0
    dots, categories = [], set()
    for i, row in enumerate(placed.itertuples(index=False)):
        label = row.label if isinstance(getattr(row, "label", None), str) else ""
        coloured = bool(label) and _interpretable(row)
        if coloured:
            categories.add(str(row.category))
        value = float(importance.iloc[i]) if importance is not None else math.nan
        r = RADIUS if not top or math.isnan(value) else SMALL + (LARGE - SMALL) * math.sqrt(abs(value) / top)
        title = f"unit {row.unit}" + (f": {label} ({row.category})" if coloured else "") + (
            f": {label}, below the IoU threshold" if label and not coloured else "") + (
            f", {sized_by} {value:.3g}" if sized_by and not math.isnan(value) else "")
        dots.append(Dot(int(row.unit), round(MARGIN + float(row.map_x) * (SIDE - 2 * MARGIN), 2),
                        round(MARGIN + (1 - float(row.map_y)) * (SIDE - 2 * MARGIN), 2), round(r, 2),
                        category_color(str(row.category)) if coloured else NO_CONCEPT, label, title))
    dots.sort(key=lambda d: -d.r)  # small dots drawn last, on top of large ones
    legend = [(c, category_color(c)) for c in sorted(categories)] + [("no concept", NO_CONCEPT)]
    return UnitMap(SIDE, dots, legend, sized_by, int(len(rows) - len(placed)))


def _interpretable(row) -> bool:
    flag = getattr(row, "interpretable", None)
    return flag is not None and bool(pd.notna(flag)) and bool(flag)


def _importance(rows: pd.DataFrame) -> tuple[pd.Series | None, str | None]:
    for column, name in (("shapley", "Shapley"), ("banzhaf", "Banzhaf")):
        if column in rows and rows[column].notna().any():
            return rows[column].astype(float), name
    return None, None
