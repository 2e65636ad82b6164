"""The history site (`neuron-catalog history --site`): each run's catalog rendered as its own site, and an
evolution page over them: per layer, how many units hold each concept in each run, and the units whose label
changed, each linked to its pages in every run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from catalog_schema import Catalog
from pipeline.render.diff_page import is_missing, format_number
from pipeline.render.site import environment, render_site, replace_site, slugs

CHANGED_SHOWN = 500  # changed units listed per layer


def render_history(catalogs: list[Catalog], table: pd.DataFrame, out: Path, workers: int | None = None) -> int:
    """Write OUT/index.html (the evolution page) and OUT/runs/<run>-<name>/ (each catalog's site); pages written."""
    folders = [f"{i}-{cat.path.name}" for i, cat in enumerate(catalogs)]

    def build(tmp: Path) -> int:
        pages = 1
        for cat, folder in zip(catalogs, folders):
            pages += render_site(cat, tmp / "runs" / folder, workers).pages
        shutil.copytree(Path(__file__).parent / "static", tmp / "static")
        (tmp / "index.html").write_text(environment().get_template("evolution.html").render(
            model_name=catalogs[-1].manifest.get("model", {}).get("name", "model"), root="",
            title="evolution", **evolution_context(catalogs, folders, table)))
        return pages

    return replace_site(Path(out), build, "--site")


def evolution_context(catalogs: list[Catalog], folders: list[str], table: pd.DataFrame) -> dict:
    runs = [{"index": i, "name": cat.path.name, "finished": cat.manifest.get("finished", ""),
             "href": f"runs/{folder}/index.html"} for i, (cat, folder) in enumerate(zip(catalogs, folders))]
    slug = [slugs(cat.layers) for cat in catalogs]
    layers = []
    for layer in dict.fromkeys(table["layer"]):
        rows = table[table["layer"] == layer]
        layers.append({"name": layer, "timeline": _timeline(rows, len(catalogs)),
                       "interpretable": [int(rows[(rows["run"] == r)]["label"].notna().sum()) for r in range(len(catalogs))],
                       **_changed(rows, len(catalogs), folders, slug, layer)})
    return {"runs": runs, "layers": layers}


def _timeline(rows: pd.DataFrame, runs: int) -> list[dict]:
    """Per concept held by a unit in any run: (category, units holding it in each run), most held last first."""
    counts = rows.dropna(subset=["label"]).groupby(["label", "category", "run"]).size().unstack("run", fill_value=0)
    counts = counts.reindex(columns=range(runs), fill_value=0)
    top = max(1, int(counts.to_numpy().max())) if len(counts) else 1
    ordered = counts.sort_values(by=[runs - 1, *range(runs - 2, -1, -1)], ascending=False, kind="stable") if len(counts) else counts
    return [{"concept": label, "category": category,
             "counts": [{"n": int(n), "shade": round(0.15 + 0.85 * n / top, 2) if n else 0} for n in row]}
            for (label, category), row in zip(ordered.index, ordered.to_numpy())]


def _changed(rows: pd.DataFrame, runs: int, folders: list[str], slug: list[dict[str, str]], layer: str) -> dict:
    """The tracks whose interpretable label changed in some run, each with its unit, label and IoU per run."""
    tracks = rows[rows["label_changed"].fillna(False).astype(bool)][["track", "first_run"]].drop_duplicates()
    out = []
    for track, first in tracks.itertuples(index=False):
        mine = rows[(rows["track"] == track) & (rows["first_run"] == first)].set_index("run")
        cells = []
        for r in range(runs):
            if r not in mine.index:
                cells.append(None)
                continue
            row, unit = mine.loc[r], int(mine.loc[r, "unit"])
            cells.append({"unit": unit, "label": "" if is_missing(row["label"]) else row["label"], "iou": format_number(row["iou"]),
                          "href": f"runs/{folders[r]}/units/{slug[r][layer]}/{unit}.html" if layer in slug[r] else None})
        out.append({"track": int(track), "first_run": int(first), "cells": cells})
    return {"changed": out[:CHANGED_SHOWN], "changed_total": len(out)}
