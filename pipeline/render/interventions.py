"""The site's intervention pages (a generator's interventions stage): per layer and concept, the ablation and
insertion curves of its top units against random units and the before/after strips; the index's table; the unit
pages' strips (the concepts whose ablated units include the unit)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from catalog_schema import Catalog
from pipeline.render.pictures import save

CURVE_W, CURVE_H, PAD = 320, 140, 30
COLUMNS = ("present", "ablated", "absent", "inserted")


def curve(rows: pd.DataFrame, intervention: str) -> dict | None:
    """SVG geometry of fraction against n, top units and random ones ('points' strings, axis ticks)."""
    mine = rows[rows["intervention"] == intervention].dropna(subset=["fraction"])
    if mine.empty:
        return None
    top_n = int(mine["n"].max())
    high = max(1.0, float(mine["fraction"].max()))
    x = lambda n: PAD + (n - 1) / max(1, top_n - 1) * (CURVE_W - 2 * PAD)  # noqa: E731
    y = lambda f: CURVE_H - PAD - max(0.0, f) / high * (CURVE_H - 2 * PAD)  # noqa: E731
    lines = {source: " ".join(f"{x(r.n):.1f},{y(r.fraction):.1f}" for r in part.sort_values("n").itertuples())
             for source, part in mine.groupby("units_from")}
    return {"width": CURVE_W, "height": CURVE_H, "top": lines.get("top", ""), "random": lines.get("random", ""),
            "x0": PAD, "x1": CURVE_W - PAD, "y0": CURVE_H - PAD, "y1": PAD, "max_n": top_n, "high": high}


def write_intervention_pages(env: jinja2.Environment, common: dict, catalog: Catalog, site: Path,
                             slug: dict[str, str]) -> tuple[int, list[dict], dict[tuple[str, int], list[dict]]]:
    """(pages written, the index's rows, (layer, unit) -> a unit page's strips)."""
    table = catalog.interventions()
    if table.empty:
        return 0, [], {}
    section = catalog.manifest["interventions"]["layers"]
    rows, strips, pages = [], {}, 0
    for layer, info in section.items():
        folder = site / "concepts" / slug[layer]
        folder.mkdir(parents=True, exist_ok=True)
        names = slug_of([c["concept"] for c in info["concepts"]])
        for c in info["concepts"]:
            concept, (a, i) = c["concept"], c["strip_units"]
            mine = table[(table["layer"] == layer) & (table["concept"] == concept)]
            pictures = _pictures(catalog.intervention_strip(layer, concept), folder, names[concept])
            top = [int(u) for u in mine[(mine["units_from"] == "top")]["units"].iloc[-1]]
            units = [{"href": f"../../units/{slug[layer]}/{u}.html", "unit": u,
                      "picture": f"../../img/{slug[layer]}/{u}-card.jpg", "ablated": u in top[:a]} for u in top]
            summary = _summary(mine, a, i)
            (folder / f"{names[concept]}.html").write_text(env.get_template("interventions.html").render(
                **common, title=f"{concept} at {layer} - {common['model_name']}", root="../../", layer=layer,
                concept=c, summary=summary, pictures=pictures, units=units, region=info["region"],
                ablation=curve(mine, "ablate"), insertion=curve(mine, "insert")))
            pages += 1
            href = f"concepts/{slug[layer]}/{names[concept]}.html"
            rows.append({"layer": layer, "concept": concept, "href": href, **summary})
            strip = {"title": f"switching off the top {a} units of {concept} (this one among them): "
                              f"{summary['removed']} of its pixels removed; random units {summary['random_removed']}",
                     "units": [{"href": f"../../{href}", "picture": f"concepts/{slug[layer]}/{p}", "text": column}
                               for column, p in zip(COLUMNS, pictures[0]["images"])]}
            for u in top[:a]:
                strips.setdefault((layer, u), []).append(strip)
    return pages, rows, strips


def _summary(rows: pd.DataFrame, a: int, i: int) -> dict:
    """The strip's n with what it removed and gained, beside random units' at the same n (percent strings)."""
    def at(kind: str, source: str, n: int) -> str:
        hit = rows[(rows["intervention"] == kind) & (rows["units_from"] == source) & (rows["n"] == n)]["fraction"]
        return "-" if hit.empty or pd.isna(hit.iloc[0]) else f"{100 * float(hit.iloc[0]):.0f}%"
    return {"ablated_n": a, "removed": at("ablate", "top", a), "random_removed": at("ablate", "random", a),
            "inserted_n": i, "gained": at("insert", "top", i), "random_gained": at("insert", "random", i)}


def _pictures(strip: np.ndarray, folder: Path, name: str) -> list[dict]:
    """Write the strip's images; per example, its four file names (relative to the concept's page)."""
    out = []
    for e, row in enumerate(strip):
        files = []
        for column, image in zip(COLUMNS, row):
            files.append(f"{name}-{e}-{column}.png")
            save(image, folder / files[-1])
        out.append({"images": files})
    return out


def slug_of(names: list[str]) -> dict[str, str]:
    """File-safe names for concepts (letters, digits, '-', '_'; others as '_'), distinct."""
    out, used = {}, set()
    for name in names:
        base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "concept"
        candidate, k = base, 1
        while candidate in used:
            k += 1
            candidate = f"{base}-{k}"
        used.add(candidate)
        out[name] = candidate
    return out
