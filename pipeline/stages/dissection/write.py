"""What the dissection stage puts in the catalog: dissection.parquet, each unit's best concept in the units
table, the concept labels with their synonyms (concepts.parquet), per layer the interpretable units and
distinct concepts, the concept data set as used."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from catalog_schema.layout import DISSECTION_COLUMNS
from pipeline.catalog.draft import ManifestPart
from pipeline.inputs.broden import Broden
from pipeline.stages.dissection.settings import DissectionSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft
    from pipeline.plan import RunPlan
    from pipeline.stages.dissection.results import DissectionOutput


def write_dissection(draft: Draft, plan: RunPlan, out: DissectionOutput, broden: Broden,
                     settings: DissectionSettings) -> None:
    units, names = draft.units, [info.name for info in plan.layers]
    best = [out.layers[n].units for n in names]
    for column in DISSECTION_COLUMNS:
        units[column] = np.concatenate([b[column] for b in best])
    # a unit that never fires on the data set passes nothing on, whatever its top quantile matches
    units["interpretable"] = units["interpretable"] & ~units["dead"].astype(bool)
    rows = [out.layers[n].concepts for n in names]
    draft.table("dissection", {c: np.concatenate([r[c] for r in rows]) for c in rows[0]})
    labels = [broden.labels[n] for n in sorted(broden.labels)]
    draft.table("concepts", {"concept_number": [lb.number for lb in labels], "concept": [lb.name for lb in labels],
                             "category": [lb.category for lb in labels], "synonyms": [";".join(lb.synonyms) or None for lb in labels]})
    interpretable = units["interpretable"].astype(bool)
    layers = {}
    for name in names:
        hit = interpretable & (units["layer"] == name)
        layers[name] = {"interpretable_units": int(hit.sum()), "unique_concepts": len(set(units["label"][hit]))}
    concepts = {
        "root": str(broden.root), "categories": list(broden.categories), "labels": len(broden.labels),
        "images": len(broden.images), "used": out.images_used, "ignored_columns": dict(broden.ignored_columns),
        "ignored_rows": list(broden.ignored_rows),
        "skipped": [{"index": i, "image": broden.images[i].image, "reason": why} for i, why in out.skipped],
    }
    return ManifestPart({"concepts": concepts}, asdict(settings),
                        {"interpretable_units": int(interpretable.sum()),
                         "unique_concepts": len(set(units["label"][interpretable]))}, layers)
