"""Bar charts of interpretable units per concept, colored by category, as NetDissect's report draws them.

Only geometry is computed here; the template writes the SVG (so every name goes through autoescaping).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

CATEGORY_COLORS = {"object": "#4c72b0", "part": "#55a868", "scene": "#c44e52", "material": "#8172b2",
                   "texture": "#ccb974", "color": "#64b5cd"}
OTHER_COLORS = ("#8c8c8c", "#937860", "#da8bc3", "#4d4d4d")
BAR, GAP, HEIGHT, LABEL_SPACE = 14, 4, 120, 110


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    height: int
    count: int
    concept: str
    category: str
    color: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_height: int
    bars: list[Bar]
    legend: list[tuple[str, str]]  # (category, color)


def category_color(category: str) -> str:
    return CATEGORY_COLORS.get(category, OTHER_COLORS[sum(map(ord, category)) % len(OTHER_COLORS)])


def concept_chart(units: pd.DataFrame) -> Chart | None:
    """Interpretable units of `units` counted per concept, largest first; None when there are none."""
    hits = units[units["interpretable"].fillna(False).astype(bool)]
    if hits.empty:
        return None
    counts = (hits.groupby(["label", "category"]).size().reset_index(name="count")
              .sort_values(["count", "label"], ascending=[False, True]))
    top = int(counts["count"].max())
    bars = []
    for i, row in enumerate(counts.itertuples(index=False)):
        h = max(1, round(HEIGHT * row.count / top))
        bars.append(Bar(GAP + i * (BAR + GAP), HEIGHT - h, h, int(row.count), str(row.label), str(row.category),
                        category_color(str(row.category))))
    legend = [(c, category_color(c)) for c in sorted(counts["category"].unique())]
    return Chart(GAP + len(bars) * (BAR + GAP), HEIGHT + LABEL_SPACE, HEIGHT, bars, legend)
