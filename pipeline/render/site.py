"""Rendering a catalog as an offline static site: an index, a page per layer and per unit, the
pictures they show and a contact sheet per layer. Relative links only; no remote reference.

Layout of SITE: index.html, static/, layers/<layer>.html, units/<layer>/<unit>.html,
img/<layer>/<unit>-{card,top,bottom}.jpg (+ -fv<v>.png; the spectrum's -q<i>.jpg, -min.jpg, -max.jpg),
contact/<layer>.png.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import jinja2
import numpy as np
import pandas as pd

from catalog_schema import Catalog
from pipeline.catalog.comparison import neurons_and_features
from pipeline.errors import UserError
import pipeline.render.pictures as pictures
from pipeline.render.attribution import attribution_pictures, attribution_views
from pipeline.render.chart import concept_chart
from pipeline.render.class_pages import write_class_pages
from pipeline.render.diff_page import diff_context
from pipeline.render.importance import class_bars, importance_context
from pipeline.render.interventions import write_intervention_pages
from pipeline.render.prefix_tokens import prefix_summaries
from pipeline.render.relations import connection_strips, dictionary_strips, neighbour_strips, write_search_index
from pipeline.render.spectrum import featvis_kinds, spectrum_pictures, spectrum_strips
from pipeline.render.unit_map import unit_map

MARKER = ".neuron-catalog-site"  # tells a site this command may replace from any other folder
FEATVIS_VIEWS = ("positive", "negative", "diverse")
UNITS_PER_TASK = 256
T = TypeVar("T")


@dataclass(frozen=True)
class RenderSummary:
    out: Path
    pages: int
    images: int
    bytes: int
    seconds: float


def slugs(names: list[str]) -> dict[str, str]:
    """File-safe, unique names for layers (module paths may hold any character)."""
    out: dict[str, str] = {}
    for name in names:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "layer"
        base, i = slug, 1
        while slug in out.values():
            i += 1
            slug = f"{base}-{i}"
        out[name] = slug
    return out


def render_site(catalog: Catalog, out: Path, workers: int | None = None,
                diff: tuple[str, pd.DataFrame] | None = None) -> RenderSummary:
    """Write the whole site into a fresh folder, then move it to `out` (a site already there is replaced).
    `diff`: (the earlier catalog's name, the per-unit diff table) adds a page of what changed."""
    started = time.perf_counter()
    out = Path(out)
    pages, images = replace_site(out, lambda tmp: _write(catalog, tmp, workers or os.cpu_count() or 1, diff))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return RenderSummary(out, pages, images, size, time.perf_counter() - started)


def replace_site(out: Path, build: Callable[[Path], T], option: str = "--out") -> T:
    """build(a fresh folder), then that folder moved to `out`: a site already there is replaced, and a failed
    build leaves it as it was. Refuses a folder that is not a site this command wrote."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise UserError(f"{option} {out} exists and is not a site written by `neuron-catalog`; "
                        "choose a new or empty directory.")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = build(tmp)
        (tmp / MARKER).write_text("written by neuron-catalog\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("pipeline.render", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)


def _write(catalog: Catalog, site: Path, workers: int, diff: tuple[str, pd.DataFrame] | None) -> tuple[int, int]:
    env = environment()
    m = catalog.manifest
    units = catalog.units()
    dissection = catalog.dissection()
    names = catalog.layers
    slug = slugs(names)
    shutil.copytree(Path(__file__).parent / "static", site / "static")
    common = {"model_name": m.get("model", {}).get("name", "model")}
    images = _write_pictures(catalog, site, slug, workers)
    searchable = write_search_index(catalog, units, slug, site)
    layers = [_layer_summary(layer, units, slug) for layer in m["layers"]]
    pages, class_rows, class_links = write_class_pages(env, common, catalog, site, slug)
    edits, edit_rows, edit_strips = write_intervention_pages(env, common, catalog, site, slug)
    pages += 1 + edits
    for info in layers:
        rows = units[units["layer"] == info["name"]].sort_values("unit")
        featvis = catalog.has_array("featvis", info["name"])
        cards = [_card(row, info["slug"], featvis) for row in rows.to_dict("records")]
        (site / "layers").mkdir(exist_ok=True)
        (site / "layers" / f"{info['slug']}.html").write_text(env.get_template("layer.html").render(
            **common, title=f"{info['name']} - {common['model_name']}", root="../", layer=info, cards=cards,
            map=unit_map(rows), map_method=m.get("unit_map", {}).get(info["name"])))
        pages += 1 + _write_unit_pages(env, common, catalog, site, info, rows, dissection, featvis,
                                       [("Similar units", "similar", neighbour_strips(catalog, info["name"], slug)),
                                        ("Connections", "connections", connection_strips(catalog, info["name"], slug)),
                                        ("Dictionary", "dictionary", dictionary_strips(catalog, info["name"], slug)),
                                        *[(heading, anchor, {u: s for (layer, u), s in links.items() if layer == info["name"]})
                                          for heading, anchor, links in (("Classes", "classes", class_links),
                                                                         ("Interventions", "interventions", edit_strips))]])
    if diff is not None:
        (site / "diff.html").write_text(env.get_template("diff.html").render(
            **common, title=f"changes - {common['model_name']}", root="", **diff_context(diff[1], diff[0], slug)))
        pages += 1
    (site / "index.html").write_text(env.get_template("index.html").render(
        **common, title=common["model_name"], root="", diff_old=diff[0] if diff else None, search=searchable,
        class_rows=class_rows, intervention_rows=edit_rows,
        **_index_context(catalog, units, layers, slug)))
    return pages, images


def _layer_summary(layer: dict, units: pd.DataFrame, slug: dict[str, str]) -> dict:
    rows = units[units["layer"] == layer["name"]]
    dissected = rows["interpretable"].notna().any()
    hits = rows[rows["interpretable"].fillna(False).astype(bool)]
    return {"name": layer["name"], "slug": slug[layer["name"]], "units": layer["units"], "shape": "x".join(map(str, layer["shape"])),
            "layout": layer.get("layout", "nchw"), "prefix_tokens": layer.get("prefix_tokens", 0),
            "dead": int(rows["dead"].sum()), "interpretable": int(len(hits)) if dissected else None,
            "concepts": int(hits["label"].nunique()) if dissected else None, "chart": concept_chart(rows) if dissected else None}


def _value(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _card(row: dict, slug: str, featvis: bool) -> dict:
    u = int(row["unit"])
    iou, shapley, act_max = _value(row.get("iou")), _value(row.get("shapley")), _value(row.get("act_max"))
    label = row.get("label") if isinstance(row.get("label"), str) else None
    return {"unit": u, "dead": bool(row["dead"]), "label": label, "category": row.get("category"), "iou": iou,
            "shapley": shapley, "shapley_ci_low": _value(row.get("shapley_ci_low")),
            "shapley_ci_high": _value(row.get("shapley_ci_high")), "act_max": act_max or 0.0,
            "iou_value": "" if iou is None else f"{iou:.6g}", "shapley_value": "" if shapley is None else f"{shapley:.6g}",
            "act_max_value": "" if act_max is None else f"{act_max:.6g}",
            "picture": f"img/{slug}/{u}-card.jpg", "featvis": f"img/{slug}/{u}-fv0.png" if featvis else None}


STATS = ("act_mean", "act_std", "act_max", "act_min", "frac_active", "dead", "label", "category", "iou", "interpretable",
         "shapley", "shapley_ci_low", "shapley_ci_high", "banzhaf", "banzhaf_ci_low", "banzhaf_ci_high",
         "featvis_activation")


def _write_unit_pages(env: jinja2.Environment, common: dict, catalog: Catalog, site: Path, info: dict,
                      rows: pd.DataFrame, dissection: pd.DataFrame, featvis: bool,
                      relations: list[tuple[str, str, dict[int, list[dict]]]]) -> int:
    template = env.get_template("unit.html")
    folder = site / "units" / info["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    concepts = {u: g.sort_values(["category", "rank"]) for u, g in dissection[dissection["layer"] == info["name"]].groupby("unit")}
    k = catalog.example_images(info["name"], 0)[0].shape[0] // 2
    views = catalog.featvis(info["name"], 0).shape[0] if featvis else 0
    has_filters = catalog.has_array("weights", info["name"])
    has_projections = catalog.has_array("projections", info["name"])
    records = rows.to_dict("records")
    by_class, attribution = class_bars(catalog, info["name"]), attribution_views(catalog, info["name"], records, info["slug"])
    spectra = spectrum_strips(catalog, info["name"], info["slug"], rows,
                              featvis_kinds(catalog.manifest, views, FEATVIS_VIEWS) if featvis else [])
    prefixes = prefix_summaries(catalog, info["name"])
    caveat = (catalog.manifest.get("featvis") or {}).get("projections_caveat")
    for i, row in enumerate(records):
        u = int(row["unit"])
        mine = concepts.get(u)
        stats = [(name, _format(row[name])) for name in STATS if name in row and _value_present(row[name])]
        html = template.render(
            **common, title=f"{info['name']} unit {u} - {common['model_name']}", root="../../", layer=info,
            unit={**row, "unit": u, "iou": _value(row.get("iou")),
                  "label": row.get("label") if isinstance(row.get("label"), str) else None}, k=k,
            prev=int(records[i - 1]["unit"]) if i > 0 else None, next=int(records[i + 1]["unit"]) if i + 1 < len(records) else None,
            pictures={"top": f"img/{info['slug']}/{u}-top.jpg", "bottom": f"img/{info['slug']}/{u}-bottom.jpg"},
            visualizations=[(FEATVIS_VIEWS[v] if v < len(FEATVIS_VIEWS) else f"view {v}", f"img/{info['slug']}/{u}-fv{v}.png")
                            for v in range(views)] + ([("filter", f"img/{info['slug']}/{u}-filter.png")] if has_filters else []),
            concepts=mine.to_dict("records") if mine is not None else [], stats=stats, relations=[(heading, anchor, strips.get(u, [])) for heading, anchor, strips in relations],
            class_importance=by_class.get(u), spectrum=spectra.get(u, []), attribution=attribution.get(u),
            projections=[(method, f"img/{info['slug']}/{u}-{method}.png") for method in ("deconvnet", "guided")]
            if has_projections else [], projections_caveat=caveat, prefix_tokens=prefixes.get(u, []),
            threshold=float(mine["threshold"].iloc[0]) if mine is not None and len(mine) else 0.0)
        (folder / f"{u}.html").write_text(html)
    return len(records)


def _value_present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _format(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{v:.5g}"
    return str(v)


def _index_context(catalog: Catalog, units: pd.DataFrame, layers: list[dict], slug: dict[str, str]) -> dict:
    m = catalog.manifest
    data = m["data"]
    model = m.get("model", {})
    context = {"model_kind": model.get("kind", ""), "input_size": model.get("input_size", ""), "data_root": data["root"],
               "images_used": data["used"], "images_total": data["images"], "classes": len(data.get("classes") or []),
               "started": m["started"], "finished": m["finished"], "stages": ", ".join(m["stages_done"]), "layers": layers,
               "concepts": ""}
    if "concepts" in m:
        c = m["concepts"]
        context["concepts"] = f"{c['root']}: {c['labels']} labels in {', '.join(c['categories'])}, {c['used']} images"
    context.update(importance_context(catalog, units, slug))
    context["dictionaries"] = [{key: v if isinstance(v, str) else "-" if _value(v) is None else
                                f"{v:.3f}" if isinstance(v, float) else v for key, v in row.items()}
                               for row in catalog.dictionary_quality().to_dict("records")]
    compared = neurons_and_features(units, [d["layer"] for d in context["dictionaries"]])
    context["compared"] = [{**row, "href": f"layers/{slug[row['layer']]}.html"}
                           for row in compared.to_dict("records")]
    return context


def _write_pictures(catalog: Catalog, site: Path, slug: dict[str, str], workers: int) -> int:
    """Every unit's pictures, in parallel processes over blocks of units; then the contact sheets."""
    tasks = []
    for layer in catalog.manifest["layers"]:
        (site / "img" / slug[layer["name"]]).mkdir(parents=True, exist_ok=True)
        for start in range(0, layer["units"], UNITS_PER_TASK):
            tasks.append((str(catalog.path), layer["name"], start, min(start + UNITS_PER_TASK, layer["units"]),
                          str(site / "img" / slug[layer["name"]])))
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            done = list(pool.map(_unit_pictures, tasks))
    else:
        done = [_unit_pictures(task) for task in tasks]
    (site / "contact").mkdir(exist_ok=True)
    tiles: dict[str, list[np.ndarray]] = {}
    for (_, layer, _, _, _), (count, block) in zip(tasks, done):
        tiles.setdefault(layer, []).append(block)
    for layer, blocks in tiles.items():
        pictures.save(pictures.contact_sheet(np.concatenate(blocks)), site / "contact" / f"{slug[layer]}.png")
    return sum(count for count, _ in done) + len(tiles)


def _unit_pictures(task: tuple[str, str, int, int, str]) -> tuple[int, np.ndarray]:
    """(files written, contact-sheet tiles) for units start..stop of a layer."""
    path, layer, start, stop, folder = task
    catalog = Catalog.open(path)
    crops, heat = catalog.example_images(layer, slice(start, stop))
    k = crops.shape[1] // 2
    featvis = catalog.featvis(layer, slice(start, stop)) if catalog.has_array("featvis", layer) else None
    filters = catalog.filters(layer)[start:stop] if catalog.has_array("weights", layer) else None
    projected = catalog.projections(layer, slice(start, stop)) if catalog.has_array("projections", layer) else None
    out, written, tiles = Path(folder), 0, []
    for i in range(stop - start):
        u = start + i
        for name, image in pictures.unit_pictures(crops[i], heat[i], k).items():
            pictures.save(image, out / f"{u}-{name}.jpg")
            written += 1
        if projected is not None:
            for m, method in enumerate(("deconvnet", "guided")):
                pictures.save(pictures.strip(projected[i, :, m]), out / f"{u}-{method}.png")
                written += 1
        if filters is not None:
            pictures.save(pictures.enlarge(filters[i], 64), out / f"{u}-filter.png")
            written += 1
        if featvis is not None:
            for v in range(featvis.shape[1]):
                pictures.save(featvis[i, v], out / f"{u}-fv{v}.png")
                written += 1
            tiles.append(featvis[i, 0])
        else:
            tiles.append(pictures.overlay(crops[i, 0], heat[i, 0]))
    written += spectrum_pictures(catalog, layer, start, stop, crops, out)
    return written + attribution_pictures(catalog, layer, start, stop, crops, out), np.stack(tiles)
