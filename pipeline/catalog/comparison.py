"""Neurons against features: does a layer's sparse dictionary explain it better than its own channels?

Per dictionary, its layer's neurons and its features side by side, from the units table (dissection's labels):
how many are interpretable (IoU at or above the threshold), how many distinct concepts they cover, and how pure
their top examples are (the mean share of an interpretable unit's top images that carry its concept).
"""

from __future__ import annotations

import pandas as pd

from catalog_schema.layout import feature_layer


COLUMNS = ("layer", "units", "units_alive", "interpretable", "interpretable_share", "concepts", "purity")


def neurons_and_features(units: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """Two rows per layer of `sources` (those with a dictionary): the layer's neurons, then its features; empty
    without dissection labels."""
    if "interpretable" not in units or units["interpretable"].isna().all():
        return pd.DataFrame(columns=list(COLUMNS))
    rows = []
    for source in sources:
        for name in (source, feature_layer(source)):
            of = units[units["layer"] == name]
            hit = of[of["interpretable"].fillna(False).astype(bool)]
            rows.append({"layer": name, "units": len(of), "units_alive": int((~of["dead"].astype(bool)).sum()),
                         "interpretable": len(hit), "interpretable_share": len(hit) / max(len(of), 1),
                         "concepts": hit["label"].nunique(),
                         "purity": float(hit["purity"].mean()) if "purity" in hit and len(hit) else float("nan")})
    return pd.DataFrame(rows, columns=list(COLUMNS))
