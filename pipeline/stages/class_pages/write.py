"""What the class_pages stage puts in the catalog: classes, class_examples and class_concepts tables, the top images,
their Grad-CAM and the concept vectors (arrays on the stage's layer), and the manifest's classes section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

import catalog_schema as cs
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.class_pages.results import ClassesPart, ClassesResult
from pipeline.stages.class_pages.settings import ClassesSettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft


def write_classes(draft: Draft, part: ClassesPart, settings: ClassesSettings, result: ClassesResult,
                  records: Any) -> ManifestPart:
    ev, k = result.evaluated, len(part.classes)
    labels = {r.image_id: r.label_index for r in records}
    explained = [d.explained[-1] if d.explained else 0.0 for d in result.decompositions] or [None] * k
    draft.table("classes", {
        "class_index": np.arange(k, dtype=np.int32), "class_name": np.array(part.classes, dtype=object),
        "images": ev.images, "correct": ev.correct,
        "accuracy": [float(c / n) if n else None for c, n in zip(ev.correct, ev.images)],
        "ibd_explained": explained, "ibd_residual": [None if e is None else 1.0 - e for e in explained]})
    rows: dict[str, list] = {c: [] for c in ("class_index", "rank", "image_id", "logit", "predicted", "label_index")}
    for c in range(k):
        for rank, (i, logit, pred) in enumerate(zip(ev.ids[c], ev.logit[c], ev.predicted[c])):
            if i >= 0:
                for key, value in zip(rows, (c, rank, int(i), float(logit), int(pred), labels[int(i)])):
                    rows[key].append(value)
    draft.table("class_examples", {key: np.asarray(v) for key, v in rows.items()})
    _pictures(draft, part, settings, result)
    ibd = _concepts(draft, part, settings, result)
    section = {"layer": part.layer.name, "head": part.head, "top": part.top, "image_size": settings.image_size,
               "ibd": ibd, "skipped": [{"image_id": i, "reason": r} for i, r in ev.skipped]}
    return ManifestPart({"class_pages": section}, asdict(settings))


def _pictures(draft: Draft, part: ClassesPart, settings: ClassesSettings, result: ClassesResult) -> None:
    s, (h, w) = settings.image_size, part.layer.spatial
    images = np.zeros((len(part.classes), part.top, s, s, 3), np.uint8)
    maps = np.full((len(part.classes), part.top, h, w), np.nan, np.float32)
    for c, (pics, cams) in enumerate(result.pictures):
        images[c, : len(pics)], maps[c, : len(cams)] = pics, cams
    draft.array(cs.CLASS_IMAGES, part.layer.name, images)
    draft.array(cs.GRADCAM, part.layer.name, maps)


def _concepts(draft: Draft, part: ClassesPart, settings: ClassesSettings, result: ClassesResult) -> dict | None:
    if result.vectors is None:
        return None
    names, categories = result.names
    draft.array(cs.CONCEPT_VECTORS, part.layer.name, result.vectors, {"names": list(names)})
    rows: dict[str, list] = {c: [] for c in ("class_index", "rank", "concept", "category", "coefficient", "explained")}
    for c, d in enumerate(result.decompositions):
        for rank, (concept, coef, share) in enumerate(zip(d.concepts, d.coefficients, d.explained)):
            for key, value in zip(rows, (c, rank, names[concept], categories[concept], coef, share)):
                rows[key].append(value)
    draft.table("class_concepts", {key: np.asarray(v, dtype=object if key in ("concept", "category") else None)
                                   for key, v in rows.items()})
    residuals = [d.residual for d in result.decompositions]
    return {"steps": settings.concepts, "concepts": int(result.valid.sum()),
            "mean_residual": float(np.mean(residuals)) if residuals else None}
