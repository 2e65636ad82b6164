"""Finding units by what their concept is called: its name or any of its Broden synonyms (label.csv `syns`).

One matching rule for `query --label` and the site's search box (which gets the same facts as a static index).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from catalog_schema import Catalog


def synonyms_by_label(catalog: Catalog) -> dict[str, list[str]]:
    """Concept name -> its synonyms (every label of that name, in label order), from the catalog's concepts table."""
    out: dict[str, list[str]] = {}
    concepts = catalog.concepts()
    for name, syns in zip(concepts["concept"], concepts["synonyms"]):
        known = out.setdefault(name, [])
        known += [s for s in (syns.split(";") if isinstance(syns, str) else []) if s not in known and s != name]
    return out


def label_matches(labels: pd.Series, text: str, synonyms: dict[str, list[str]]) -> np.ndarray:
    """bool per label: the label, or one of its synonyms, holds `text` (case-insensitive)."""
    needle = text.casefold()
    hits = {name for name, syns in synonyms.items() if any(needle in s.casefold() for s in syns)}
    named = labels.fillna("").str.casefold().str.contains(needle, regex=False).to_numpy(bool)
    return named | labels.isin(hits).to_numpy(bool)


def search_index(catalog: Catalog, units: pd.DataFrame, slug: dict[str, str]) -> dict:
    """The site's search index: every labelled unit of every layer with its category, IoU, synonyms and page."""
    synonyms = synonyms_by_label(catalog)
    labelled = units[units["label"].notna()]
    rows = [{"layer": row.layer, "unit": int(row.unit), "label": row.label, "category": row.category,
             "iou": None if pd.isna(row.iou) else round(float(row.iou), 4), "interpretable": bool(row.interpretable),
             "href": f"units/{slug[row.layer]}/{int(row.unit)}.html"} for row in labelled.itertuples()]
    used = sorted({r["label"] for r in rows})
    return {"units": rows, "synonyms": {name: synonyms.get(name, []) for name in used},
            "categories": sorted({r["category"] for r in rows if r["category"]})}
