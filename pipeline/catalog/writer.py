"""Writing a finished run into the catalog directory.

Everything is written first under CATALOG/.staging/ and then moved into place (tables one rename
each, the array store one exchange, the manifest last), so a write that fails (a full disk) leaves
the catalog as it was, and a reader never sees a half-written file.
"""

from __future__ import annotations

import platform
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import catalog_schema as cs
from catalog_schema.storage import copy_array, publish, write_array, write_manifest, write_table
from pipeline.plan import RunPlan, activations_config, dissection_config, shapley_config
from pipeline.reuse import FEATVIS_COLUMNS, SHAPLEY_COLUMNS, Reused
from pipeline.stages.activations.compute import LayerResult
from pipeline.stages.dissection.measure import DissectionResult
from pipeline.stages.activations.crops import CropBatch, CropRequest
from pipeline.stages.featvis.render import FeatvisChunk
from pipeline.stages.featvis.projections import ProjectionBatch, ProjectionRequest
from pipeline.stages.shapley.estimator import ShapleyOutput


STAGING = ".staging"  # inside the catalog: the next version, written completely before it is moved into place


@dataclass(frozen=True)
class DissectionOutput:
    """The dissection stage's results per layer and the concept images it used or skipped."""

    layers: dict[str, DissectionResult]
    images_used: int
    skipped: list[tuple[int, str]]


def crop_requests(plan: RunPlan, results: dict[str, LayerResult]) -> list[CropRequest]:
    """One request per example row: where to cut it and which activation counts as full heat."""
    k = activations_config(plan.job).k
    requests = []
    for info in plan.layers_to_compute("activations"):
        res = results[info.name]
        ex = res.examples
        vmax, vmin = res.units["act_max"], res.units["act_min"]
        for i in range(len(ex["unit"])):
            unit, top = int(ex["unit"][i]), ex["sign"][i] == "top"
            box = (int(ex["box_y0"][i]), int(ex["box_x0"][i]), int(ex["box_y1"][i]), int(ex["box_x1"][i]))
            requests.append(CropRequest(info.name, unit, int(ex["rank"][i]) + (0 if top else k), int(ex["image_id"][i]),
                                        box, float(vmax[unit] if top else vmin[unit])))
    return requests


def projection_requests(plan: RunPlan, results: dict[str, LayerResult]) -> list[ProjectionRequest]:
    """One request per top example: project the unit's maximum in that image back to its pixels."""
    requests = []
    for info in plan.layers_to_compute("featvis"):
        ex = results[info.name].examples
        for i in np.flatnonzero(ex["sign"] == "top"):
            box = (int(ex["box_y0"][i]), int(ex["box_x0"][i]), int(ex["box_y1"][i]), int(ex["box_x1"][i]))
            requests.append(ProjectionRequest(info.name, int(ex["unit"][i]), int(ex["rank"][i]), int(ex["image_id"][i]),
                                              int(ex["y"][i]), int(ex["x"][i]), box))
    return requests


def write_catalog(plan: RunPlan, results: dict[str, LayerResult], crops: dict[str, list[CropBatch]],
                  skipped: list[tuple[int, str]], times: dict[str, str], run_id: str,
                  dissection: DissectionOutput | None = None, shapley: ShapleyOutput | None = None,
                  rendered: dict[int, FeatvisChunk] | None = None,
                  projected: dict[str, list[ProjectionBatch]] | None = None,
                  reused: Reused | None = None, reuse_record: dict | None = None) -> dict[str, Any]:
    """The whole catalog, written under CATALOG/.staging and then moved into place (see the module doc); tables
    and arrays of stages or layers not in this run do not survive it. `results` and `dissection` hold every
    layer; what `reused` lists is copied from the previous catalog."""
    reused = reused or Reused()
    catalog = plan.catalog / STAGING
    shutil.rmtree(catalog, ignore_errors=True)  # left by a run that failed while writing
    catalog.mkdir(parents=True)
    try:
        manifest = _write_all(catalog, plan, results, crops, skipped, times, run_id, dissection, shapley, rendered,
                              projected, reused, reuse_record)
        publish(catalog, plan.catalog)
    except BaseException:
        shutil.rmtree(catalog, ignore_errors=True)
        raise
    return manifest


def _write_all(catalog: Path, plan: RunPlan, results: dict[str, LayerResult], crops: dict[str, list[CropBatch]],
               skipped: list[tuple[int, str]], times: dict[str, str], run_id: str, dissection: DissectionOutput | None,
               shapley: ShapleyOutput | None, rendered: dict[int, FeatvisChunk] | None,
               projected: dict[str, list[ProjectionBatch]] | None, reused: Reused, reuse_record: dict | None) -> dict:
    """Every table, array and the manifest of the catalog, under `catalog` (the staging folder)."""
    k, patch = activations_config(plan.job).k, activations_config(plan.job).patch_size
    names = [info.name for info in plan.layers]
    units = {c: np.concatenate([results[n].units[c] for n in names]) for c in results[names[0]].units}
    examples = {c: np.concatenate([results[n].examples[c] for n in names]) for c in results[names[0]].examples}
    if dissection is not None:
        best = [dissection.layers[n].units for n in names]
        for column in ("label", "category", "iou", "interpretable"):
            units[column] = np.concatenate([b[column] for b in best])
        # a unit that never fires on the data set passes nothing on, whatever its top quantile matches
        units["interpretable"] = units["interpretable"] & ~units["dead"].astype(bool)
        rows = [dissection.layers[n].concepts for n in names]
        write_table(catalog, "dissection", cs.to_table("dissection", {c: np.concatenate([r[c] for r in rows]) for c in rows[0]}))
    if shapley is not None:
        _shapley_tables(catalog, plan, units, shapley)
    elif reused.shapley is not None:
        _copy_shapley(catalog, units, reused.shapley)
    if rendered is not None:
        _featvis_arrays(catalog, units, rendered)
        _copy_featvis(catalog, units, reused)
    write_table(catalog, "units", cs.to_table("units", units))
    write_table(catalog, "examples", cs.to_table("examples", examples))
    write_table(catalog, "images", cs.to_table("images", _image_columns(plan, skipped)))
    paths = {r.image_id: r.path for r in plan.images.records}
    for info in plan.layers:
        if info.name in reused.activations:
            for kind in (cs.EXAMPLES, cs.HEATMAPS):
                copy_array(reused.catalog.path, catalog, kind, info.name)
        else:
            pics = np.zeros((info.units, 2 * k, patch, patch, 3), np.uint8)
            heat = np.zeros((info.units, 2 * k, patch, patch), np.uint8)
            for batch in crops.get(info.name, []):
                pics[batch.unit, batch.slot] = batch.crops if batch.crops.shape[-1] == 3 else batch.crops.repeat(3, axis=-1)
                heat[batch.unit, batch.slot] = batch.heat
            write_array(catalog, cs.EXAMPLES, info.name, pics)
            write_array(catalog, cs.HEATMAPS, info.name, heat)
        res = results[info.name]
        write_array(catalog, cs.MEAN_MAPS, info.name, res.mean_map)
        write_array(catalog, cs.PROBES, info.name, res.probe, {"image_ids": [int(i) for i in res.probe_ids],
                                                                "paths": [paths[int(i)] for i in res.probe_ids]})
    for name, images in (plan.filters or {}).items():
        write_array(catalog, cs.WEIGHTS, name, images)
    if projected is not None:
        for info in plan.layers_to_compute("featvis"):
            views = np.full((info.units, k, 2, patch, patch, 3), 128, np.uint8)
            for batch in projected.get(info.name, []):
                views[batch.unit, batch.rank] = batch.images
            write_array(catalog, cs.PROJECTIONS, info.name, views)
    manifest = _manifest(plan, units, skipped, times, run_id)
    manifest["reuse"] = reuse_record or {"previous": None, "previous_run_id": None, "stages": {}}
    if dissection is not None:
        _add_dissection(manifest, plan, units, dissection)
    if shapley is not None:
        _add_shapley(manifest, plan, shapley)
    elif reused.shapley is not None:
        manifest["settings"]["shapley"] = reused.shapley["settings"]
        manifest["shapley"] = reused.shapley["manifest"]
    if rendered is not None:
        manifest["settings"]["featvis"] = asdict(plan.featvis)
        manifest["featvis"] = {"views": [kind for kind, _ in plan.featvis.views()], "size": plan.featvis.size,
                               "layers": sorted({task.layer for task in plan.featvis_tasks}, key=[i.name for i in plan.layers].index),
                               "flat_units": int(np.nansum(np.asarray(units["featvis_flat"], dtype=float)))}
    write_manifest(catalog, manifest)
    return manifest


def _image_columns(plan: RunPlan, skipped: list[tuple[int, str]]) -> dict[str, list]:
    reasons = dict(skipped)
    recs = plan.images.records
    return {
        "image_id": [r.image_id for r in recs], "path": [r.path for r in recs], "label": [r.label for r in recs],
        "label_index": [r.label_index for r in recs], "skipped": [r.image_id in reasons for r in recs],
        "skip_reason": [reasons.get(r.image_id) for r in recs],
    }


def _manifest(plan: RunPlan, units: dict[str, np.ndarray], skipped: list[tuple[int, str]],
              times: dict[str, str], run_id: str) -> dict[str, Any]:
    paths = {r.image_id: r.path for r in plan.images.records}
    dead = units["dead"].astype(bool)
    layers = []
    for info in plan.layers:
        rf = plan.fields[info.name]
        in_layer = units["layer"] == info.name
        layers.append({
            "name": info.name, "units": info.units, "shape": list(info.shape), "dead_units": int(dead[in_layer].sum()),
            "receptive_field": {"jump": list(rf.jump), "offset": list(rf.offset), "size": list(rf.size),
                                "whole_image": rf.whole_image, "exact": rf.exact},
        })
    return {
        "schema_version": cs.SCHEMA_VERSION,
        "run_id": run_id,
        **times,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "job": plan.job.to_dict(),
        "job_file": str(plan.job.path),
        "fingerprints": plan.fingerprints,
        "stages_done": list(plan.stages),
        "layers": layers,
        "model": {"kind": plan.recipe.kind, "name": plan.recipe.name, "input_size": plan.prep.input_size,
                  "channels": plan.prep.channels},
        "data": {
            "root": str(plan.images.root), "classes": list(plan.images.classes),
            "images": len(plan.images.records), "used": len(plan.images.records) - len(skipped),
            "skipped": [{"image_id": i, "path": paths[i], "reason": why} for i, why in skipped],
        },
        "settings": {"activations": asdict(activations_config(plan.job)), "preprocess": asdict(plan.prep)},
        "prepared": plan.prepared,
        "summary": {"layers": len(plan.layers), "units": int(len(dead)), "dead_units": int(dead.sum()),
                    "nonfinite_units": int((np.asarray(units["nonfinite"]) > 0).sum())},
        "errors": [],
    }


def _add_dissection(manifest: dict[str, Any], plan: RunPlan, units: dict[str, np.ndarray], out: DissectionOutput) -> None:
    """Per layer the interpretable units and distinct concepts; the concept data set as used."""
    broden = plan.broden
    interpretable = units["interpretable"].astype(bool)
    for layer in manifest["layers"]:
        hit = interpretable & (units["layer"] == layer["name"])
        layer["interpretable_units"] = int(hit.sum())
        layer["unique_concepts"] = len(set(units["label"][hit]))
    manifest["summary"]["interpretable_units"] = int(interpretable.sum())
    manifest["summary"]["unique_concepts"] = len(set(units["label"][interpretable]))
    manifest["settings"]["dissection"] = asdict(dissection_config(plan.job))
    manifest["concepts"] = {
        "root": str(broden.root), "categories": list(broden.categories), "labels": len(broden.labels),
        "images": len(broden.images), "used": out.images_used, "ignored_columns": dict(broden.ignored_columns),
        "ignored_rows": list(broden.ignored_rows),
        "skipped": [{"index": i, "image": broden.images[i].image, "reason": why} for i, why in out.skipped],
    }


def _shapley_tables(catalog: Path, plan: RunPlan, units: dict[str, np.ndarray], out: ShapleyOutput) -> None:
    """shapley.parquet, shapley_ablation.parquet, and the value columns of the units table."""
    cfg, res = shapley_config(plan.job), out.result
    names = [name for name, n in plan.shapley_layers for _ in range(n)]
    unit_ids = [u for _, n in plan.shapley_layers for u in range(n)]
    players = len(names)
    write_table(catalog, "shapley", cs.to_table("shapley", {
        "layer": names, "unit": unit_ids, "metric": [cfg.metric] * players, "target_class": [cfg.target_class] * players,
        "value": res.value, "ci_low": res.ci_low, "ci_high": res.ci_high, "samples": res.samples}))
    label = [f"{n}:{u}" for n, u in zip(names, unit_ids)]
    write_table(catalog, "shapley_ablation", cs.to_table("shapley_ablation", {
        "metric": [cfg.metric] * len(out.ablation), "target_class": [cfg.target_class] * len(out.ablation),
        "n": [row[0] for row in out.ablation], "method": [row[1] for row in out.ablation],
        "value": [row[2] for row in out.ablation], "drop": [row[3] for row in out.ablation],
        "units": [";".join(label[i] for i in np.flatnonzero(row[4])) for row in out.ablation]}))
    where = {key: i for i, key in enumerate(zip(names, unit_ids))}
    rows = [where.get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for column, values in (("shapley", res.value), ("shapley_ci_low", res.ci_low), ("shapley_ci_high", res.ci_high)):
        units[column] = [float(values[r]) if r is not None else None for r in rows]  # null: not a player


def _add_shapley(manifest: dict[str, Any], plan: RunPlan, out: ShapleyOutput) -> None:
    res = out.result
    manifest["settings"]["shapley"] = asdict(shapley_config(plan.job))
    manifest["shapley"] = {
        "players": int(len(res.value)), "layers": [name for name, _ in plan.shapley_layers],
        "eval_images": out.eval_images, "v_all": res.v_full, "v_none": res.v_none, "rounds": res.rounds,
        "permutations": res.permutations, "evaluations": res.evaluations,
        "unsettled_per_round": [int(u) for _, u in res.history],
    }


def _featvis_arrays(catalog: Path, units: dict[str, np.ndarray], rendered: dict[int, FeatvisChunk]) -> None:
    """featvis/<layer> arrays, and per unit the reached objective, the ratio of its peak to act_max, the flat flag."""
    by_layer: dict[str, list[FeatvisChunk]] = {}
    for index in sorted(rendered):
        by_layer.setdefault(rendered[index].layer, []).append(rendered[index])
    n = len(units["layer"])
    objective, ratio, flat = [None] * n, [None] * n, [None] * n
    row = {(layer, int(unit)): i for i, (layer, unit) in enumerate(zip(units["layer"], units["unit"]))}
    for layer, chunks in by_layer.items():
        write_array(catalog, cs.FEATVIS, layer, np.concatenate([c.images for c in chunks]))
        for chunk in chunks:
            for j, unit in enumerate(chunk.units):
                i = row[(layer, int(unit))]
                best = float(units["act_max"][i])
                objective[i] = float(chunk.objective[j])
                ratio[i] = float(chunk.peak[j]) / best if best > 0 else None
                flat[i] = bool(chunk.flat[j])
    units["featvis_activation"], units["featvis_ratio"], units["featvis_flat"] = objective, ratio, flat


def _copy_featvis(catalog: Path, units: dict[str, np.ndarray], reused: Reused) -> None:
    """Visualizations and projections of layers whose featvis inputs did not change, as the previous run made them."""
    for layer, columns in reused.featvis.items():
        rows = np.flatnonzero(units["layer"] == layer)
        for column in FEATVIS_COLUMNS:
            values = list(units[column])
            for i, value in zip(rows, columns[column]):
                values[i] = value
            units[column] = values
        copy_array(reused.catalog.path, catalog, cs.PROJECTIONS, layer)
        if reused.catalog.has_array(cs.FEATVIS.group, layer):
            copy_array(reused.catalog.path, catalog, cs.FEATVIS, layer)


def _copy_shapley(catalog: Path, units: dict[str, np.ndarray], previous: dict) -> None:
    """The previous run's Shapley tables and unit columns (the model and the evaluation set are unchanged)."""
    for table in ("shapley", "shapley_ablation"):
        write_table(catalog, table, previous[table])
    values = [previous["units"].get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for j, column in enumerate(SHAPLEY_COLUMNS):
        units[column] = [None if v is None else v[j] for v in values]
