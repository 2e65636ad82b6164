"""The site's class pages (the class_pages stage): accuracy, top images with their Grad-CAM, the IBD decomposition and the
units the class rests on (per-class importance); and what links to them (the index's table, the unit pages)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from catalog_schema import Catalog
from pipeline.render.importance import first_estimator
from pipeline.render.pictures import jet_overlay, save

RESTS_ON = 8  # units shown per class, by its per-class importance
CLASS_LINKS = 3  # classes shown per unit page: those whose top units it is among


def write_class_pages(env: jinja2.Environment, common: dict, catalog: Catalog, site: Path,
                      slug: dict[str, str]) -> tuple[int, list[dict], dict[tuple[str, int], list[dict]]]:
    """(pages written, the index's rows, (layer, unit) -> a unit page's strip of the classes resting on it)."""
    classes = catalog.classes()
    if classes.empty:
        return 0, [], {}
    (site / "classes" / "img").mkdir(parents=True, exist_ok=True)
    concepts, examples = catalog.class_concepts(), catalog.class_examples()
    rests = _rests_on(catalog)
    links: dict[tuple[str, int], list[dict]] = {}
    rows = []
    for row in classes.to_dict("records"):
        c = int(row["class_index"])
        images = _pictures(catalog, c, site)
        mine = examples[examples["class_index"] == c].to_dict("records")
        units = [{**u, "href": f"../units/{slug[u['layer']]}/{u['unit']}.html",
                  "picture": f"../img/{slug[u['layer']]}/{u['unit']}-card.jpg"} for u in rests.get(c, [])]
        parts = concepts[concepts["class_index"] == c].to_dict("records")
        (site / "classes" / f"{c}.html").write_text(env.get_template("class.html").render(
            **common, title=f"{row['class_name']} - {common['model_name']}", root="../", cls=row,
            examples=[{**e, "picture": p, "predicted_name": classes.loc[int(e["predicted"]), "class_name"]}
                      for e, p in zip(mine, images)], concepts=parts, units=units,
            info=catalog.manifest["class_pages"]))
        rows.append({**row, "href": f"classes/{c}.html", "first": parts[0]["concept"] if parts else None,
                     "picture": images[0] if images else ""})
        for u in units[:RESTS_ON]:
            links.setdefault((u["layer"], u["unit"]), []).append(
                {"href": f"../../classes/{c}.html", "picture": images[0] if images else "", "value": u["value"],
                 "text": f"{row['class_name']} {u['value']:.3g}"})
    strips = {key: [{"title": f"classes whose {RESTS_ON} most important units (per-class value) include this one",
                     "units": sorted(v, key=lambda x: -x["value"])[:CLASS_LINKS]}] for key, v in links.items()}
    head = catalog.manifest["class_pages"]["head"]
    for row in rows:  # the classifier's units are the classes' logits
        if head in slug:
            strips.setdefault((head, int(row["class_index"])), []).insert(0, {
                "title": "this unit is the logit of", "units": [{"href": f"../../{row['href']}", "picture": row["picture"],
                                                               "text": f"class {row['class_name']}"}]})
    return len(rows), rows, strips


def _rests_on(catalog: Catalog) -> dict[int, list[dict]]:
    """class -> its RESTS_ON units of largest per-class value (the run's first estimator); empty without Shapley."""
    table = catalog.importance_by_class()
    if table.empty:
        return {}
    table = table[(table["estimator"] == first_estimator(catalog, table)) & table["value"].notna()]
    out = {}
    for c, rows in table.groupby("class"):
        top = rows.sort_values(["value", "layer", "unit"], ascending=[False, True, True]).head(RESTS_ON)
        out[int(c)] = [{"layer": str(r.layer), "unit": int(r.unit), "value": float(r.value)} for r in top.itertuples()]
    return out


def _pictures(catalog: Catalog, c: int, site: Path) -> list[str]:
    """Each top image with its Grad-CAM's positive part laid over (scaled to the image's own maximum); paths from the
    site's root."""
    images, cams = catalog.class_pictures(c)
    paths = []
    for rank, (image, cam) in enumerate(zip(images, cams)):
        if np.isnan(cam).all():
            continue
        size = image.shape[0]
        heat = np.asarray(Image.fromarray(np.maximum(cam, 0).astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
        top = float(heat.max())
        heat = (255 * heat / top).clip(0, 255).astype(np.uint8) if top > 0 else np.zeros_like(heat, np.uint8)
        name = f"classes/img/{c}-{rank}.jpg"
        save(jet_overlay(image, heat), site / name)
        paths.append(name)
    return paths

