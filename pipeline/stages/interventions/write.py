"""What the interventions stage puts in the catalog: the generator_interventions table, the before/after strips
(an array per layer) and the manifest's interventions section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

import catalog_schema as cs
from pipeline.catalog.draft import ManifestPart
from pipeline.inputs.models import LayerInfo
from pipeline.stages.interventions.edit import Outcome
from pipeline.stages.interventions.settings import InterventionsSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft

COLUMNS = ("layer", "concept", "category", "intervention", "units_from", "n", "units", "draws", "images",
           "pixels_before", "pixels_after", "fraction")


def rows_of(o: Outcome) -> list[tuple]:
    """The table's rows of one (layer, concept): per intervention and n, the top units' row and the random one's."""
    t, rows = o.task, []
    for kind, before, images, top, random in (("ablate", o.ablate_before, len(t.present), o.ablate_top, o.ablate_random),
                                              ("insert", o.insert_before, len(t.absent), o.insert_top, o.insert_random)):
        for k in range(len(t.top)):
            for source, after, units, draws in (("top", float(top[k]), t.top[: k + 1], 1),
                                                ("random", float(random[:, k].mean()), t.random[0][: k + 1], len(random))):
                rows.append((t.layer.name, t.concept, t.category, kind, source, k + 1, list(units), draws, images,
                             before, after, _fraction(kind, before, after, images * o.region_pixels)))
    return rows


def _fraction(kind: str, before: int, after: float, region: int) -> float | None:
    if kind == "ablate":
        return (before - after) / before if before else None
    return (after - before) / region if region else None


def write_interventions(draft: Draft, settings: InterventionsSettings, layers: tuple[LayerInfo, ...],
                        outcomes: list[Outcome]) -> ManifestPart:
    rows = [row for o in outcomes for row in rows_of(o)]
    draft.table("generator_interventions", {c: [row[i] for row in rows] for i, c in enumerate(COLUMNS)})
    section = {}
    for info in layers:
        mine = [o for o in outcomes if o.task.layer.name == info.name]
        section[info.name] = {"region": list(mine[0].task.region) if mine else None, "concepts": [
            {"concept": o.task.concept, "present": len(o.task.present), "absent": len(o.task.absent),
             "strip_units": list(o.strip_units), "values": [float(v) for v in o.values]} for o in mine]}
        if mine:
            draft.array(cs.INTERVENTIONS, info.name, np.stack([o.strip for o in mine]),
                        {"concepts": [o.task.concept for o in mine], "strip_units": [list(o.strip_units) for o in mine]})
    return ManifestPart({"interventions": {"layers": section, "examples": settings.examples}}, asdict(settings))
