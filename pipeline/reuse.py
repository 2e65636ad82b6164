"""Re-analysis: which (stage, layer) results of a previous catalog still hold, and reading them back.

A result is reused when every input it depends on hashes the same as when the previous
catalog computed it: the layer's upstream weights (a forward pass found the modules that
run before it), the data set, the concept data set, the stage's settings. Shapley is all or
nothing: it depends on the whole model and the evaluation set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import catalog_schema as cs
from catalog_schema import Catalog
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.plan import RunPlan, activations_config, dissection_config, shapley_config
from pipeline.stages.activations.compute import LayerResult
from pipeline.stages.dissection.measure import DissectionResult

WHOLE_MODEL = "*"  # the layer key of a stage computed for the model as a whole (Shapley)

_WHY = {
    "layer": "the weights of the layer or of a module before it changed",
    "model": "the model changed",
    "data": "the data set changed",
    "concepts": "the concept data set changed",
    "settings": "the stage's settings changed",
    "activations": "the activations stage's settings changed",
    "eval_set": "the evaluation images changed",
}
ACTIVATION_COLUMNS = ("layer", "unit", "act_mean", "act_std", "act_max", "act_min", "frac_active", "dead", "nonfinite")
FEATVIS_COLUMNS = ("featvis_activation", "featvis_ratio", "featvis_flat")
SHAPLEY_COLUMNS = ("shapley", "shapley_ci_low", "shapley_ci_high")
_NEEDS = {"activations": (cs.EXAMPLES, cs.HEATMAPS, cs.MEAN_MAPS, cs.PROBES), "featvis": (cs.PROJECTIONS,)}


def stage_inputs(plan: RunPlan) -> dict[str, dict[str, dict[str, str]]]:
    """Per stage, per layer (WHOLE_MODEL for Shapley): the hash of each input its result depends on."""
    fp, job = plan.fingerprints, plan.job
    acts = json_fingerprint({"activations": asdict(activations_config(job)), "prep": asdict(plan.prep),
                             "seed": job.seed, "limit": job.data.limit})
    names = [info.name for info in plan.layers]
    out = {"activations": {n: {"layer": fp["layers"][n], "data": fp["data"], "settings": acts} for n in names}}
    if "featvis" in plan.stages:  # visualizations, and the projections of the layer's top examples
        rendered = {task.layer for task in plan.featvis_tasks}
        out["featvis"] = {n: {"layer": fp["layers"][n], "data": fp["data"], "activations": acts, "settings": json_fingerprint(
            {"featvis": asdict(plan.featvis), "layer_index": i, "rendered": n in rendered, "seed": job.seed})}
            for i, n in enumerate(names)}
    if "dissection" in plan.stages:
        method = {"threshold_memory_mb"}  # how thresholds are computed, not what they are
        d = {k: v for k, v in asdict(dissection_config(job)).items() if k not in method}
        settings = json_fingerprint({"dissection": d, "prep": asdict(plan.prep)})
        out["dissection"] = {n: {"layer": fp["layers"][n], "concepts": fp["concepts"], "settings": settings} for n in names}
    if "shapley" in plan.stages:
        evals = json_fingerprint([(r.image_id, r.path, r.label_index) for r in plan.shapley_eval])
        settings = json_fingerprint({"shapley": asdict(shapley_config(job)), "players": plan.shapley_layers,
                                     "activations": acts, "seed": job.seed})
        out["shapley"] = {WHOLE_MODEL: {"model": fp["model"], "data": fp["data"], "eval_set": evals, "settings": settings}}
    return out


def decide(inputs: dict[str, dict[str, dict[str, str]]], previous: Catalog | None) -> tuple[dict[str, tuple[str, ...]], dict]:
    """From `stage_inputs`: (the layers to compute per stage, the manifest's record of what was reused or
    computed and why)."""
    compute: dict[str, tuple[str, ...]] = {}
    record: dict[str, dict[str, dict[str, str]]] = {}
    for stage, layers in inputs.items():
        todo = []
        for layer, parts in layers.items():
            why = _why_computed(previous, stage, layer, parts)
            if why is None:
                record.setdefault(stage, {})[layer] = {"action": "reused", "why": "its inputs are unchanged"}
            else:
                todo.append(layer)
                record.setdefault(stage, {})[layer] = {"action": "computed", "why": why}
        compute[stage] = tuple(todo)
    return compute, {"previous": str(previous.path) if previous else None,
                     "previous_run_id": previous.manifest["run_id"] if previous else None, "stages": record}


def _why_computed(previous: Catalog | None, stage: str, layer: str, parts: dict[str, str]) -> str | None:
    """Why the result must be computed, or None when the previous catalog's result still holds."""
    if previous is None:
        return "no previous catalog"
    m = previous.manifest
    if stage not in m["stages_done"]:
        return f"the previous catalog has no {stage} results"
    old = m["fingerprints"].get("inputs", {}).get(stage, {}).get(layer)
    if old is None:
        return f"the previous catalog has no {stage} results for this layer"
    changed = [key for key in parts if old.get(key) != parts[key]]
    if changed:
        return "; ".join(_WHY.get(key, f"{key} changed") for key in changed)
    missing = [kind.group for kind in _NEEDS.get(stage, ()) if not previous.has_array(kind.group, layer)]
    if missing:
        return f"the previous catalog lacks its {', '.join(missing)} arrays"
    return None


@dataclass
class Reused:
    """Results read back from the previous catalog, for the (stage, layer) pairs not computed."""

    catalog: Catalog | None = None
    activations: dict[str, LayerResult] = field(default_factory=dict)
    featvis: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # layer -> FEATVIS_COLUMNS
    dissection: dict[str, DissectionResult] = field(default_factory=dict)
    concepts: dict | None = None  # the previous manifest's concepts section
    shapley: dict | None = None  # tables 'shapley', 'shapley_ablation' (DataFrames), 'manifest', 'settings', 'units'
    skipped: list[tuple[int, str]] = field(default_factory=list)  # images the previous run could not read


def load(plan: RunPlan, previous: Catalog | None) -> Reused:
    """Read every reused result into memory before anything is written (the previous catalog may be the target).

    Tables are read with pyarrow, not pandas: a null must come back as a null (pandas turns a null string,
    integer or boolean into a float NaN, which the schema refuses) and a NaN as a NaN."""
    if previous is None or plan.compute is None:
        return Reused()
    out = Reused(previous)
    units = previous.arrow("units")
    concepts = previous.arrow("dissection") if "dissection" in plan.stages else None
    for stage in ("activations", "featvis", "dissection"):
        if stage not in plan.stages:
            continue
        for info in plan.layers:
            if info.name in plan.compute.get(stage, ()):
                continue
            rows = _of_layer(units, info.name).sort_by("unit")
            if stage == "activations":
                out.activations[info.name] = _layer_result(previous, rows, info.name)
            elif stage == "featvis":
                out.featvis[info.name] = {c: column(rows, c) for c in FEATVIS_COLUMNS}
            else:
                out.dissection[info.name] = _dissection_result(_of_layer(concepts, info.name), rows)
    if out.dissection:
        out.concepts = previous.manifest.get("concepts")
    if "shapley" in plan.stages and WHOLE_MODEL not in plan.compute.get("shapley", (WHOLE_MODEL,)):
        values = zip(*(units.column(c).to_pylist() for c in ("layer", "unit", *SHAPLEY_COLUMNS)))
        out.shapley = {"shapley": previous.arrow("shapley"), "shapley_ablation": previous.arrow("shapley_ablation"),
                       "manifest": previous.manifest["shapley"], "settings": previous.manifest["settings"]["shapley"],
                       "units": {(layer, unit): tuple(rest) for layer, unit, *rest in values if rest[0] is not None}}
    images = previous.arrow("images")
    out.skipped = [(i, why) for i, why in zip(images.column("image_id").to_pylist(), images.column("skip_reason").to_pylist())
                   if why is not None]
    return out


def _of_layer(table: pa.Table, layer: str) -> pa.Table:
    """The rows of one layer, in file order."""
    return table.filter(pc.equal(table.column("layer"), layer))


def _layer_result(previous: Catalog, rows: pa.Table, layer: str) -> LayerResult:
    units = {c: column(rows, c) for c in ACTIVATION_COLUMNS}
    units["nonfinite"] = np.array([v or 0 for v in units["nonfinite"]], np.int64)  # null in older catalogs
    examples = previous.arrow("examples", filters=[("layer", "==", layer)])
    probe, ids = previous.probes(layer)
    return LayerResult(units, {c: column(examples, c) for c in examples.column_names}, previous.mean_map(layer), probe, ids)


def _dissection_result(concepts: pa.Table, rows: pa.Table) -> DissectionResult:
    best = {c: column(rows, c) for c in ("layer", "unit", "label", "category", "iou", "interpretable")}
    best["interpretable"] = best["interpretable"].astype(bool)
    return DissectionResult({c: column(concepts, c) for c in concepts.column_names}, best, np.zeros((0, 0), np.float32))


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as the writer builds it: a numpy array, or an object array with None where the column is null
    (`catalog_schema.to_table` turns None back into a null, and keeps a NaN a NaN)."""
    values = table.column(name)
    if values.null_count:
        return np.array(values.to_pylist(), dtype=object)
    return values.to_numpy()
