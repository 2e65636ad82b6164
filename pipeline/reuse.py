"""Re-analysis: which (stage, layer) results of a previous catalog still hold, and reading them back.

A result is reused when every input it depends on hashes the same as when the previous
catalog computed it (each stage says what those are: the layer's upstream weights, the data
set, the concept data set, the stage's settings...). A stage computed for the model as a whole
(Shapley) has one key, "*", and is reused all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catalog_schema import Catalog
from pipeline.inputs.fingerprints import SCHEME
from pipeline.plan import RunPlan
from pipeline.stages.protocol import Stage

Stages = Mapping[str, Stage]  # the run's stages by name, in pipeline order

_WHY = {  # inputs many stages share; a stage names its own in Stage.reasons
    "layer": "the weights of the layer or of a module before it changed",
    "model": "the model changed",
    "data": "the data set changed",
    "settings": "the stage's settings changed",
}


def stage_inputs(plan: RunPlan, stages: Stages) -> dict[str, dict[str, dict[str, str]]]:
    """Per stage, per layer ("*" for a whole-model result): the hash of each input its result depends on."""
    return {name: stage.inputs(plan) for name, stage in stages.items()}


def decide(inputs: dict[str, dict[str, dict[str, str]]], previous: Catalog | None,
           stages: Stages) -> tuple[dict[str, tuple[str, ...]], dict]:
    """From `stage_inputs`: (the layers to compute per stage, the manifest's record of what was reused or
    computed and why)."""
    compute: dict[str, tuple[str, ...]] = {}
    record: dict[str, dict[str, dict[str, str]]] = {}
    for stage, layers in inputs.items():
        todo = []
        for layer, parts in layers.items():
            why = _why_computed(previous, stages[stage], layer, parts)
            if why is None:
                record.setdefault(stage, {})[layer] = {"action": "reused", "why": "its inputs are unchanged"}
            else:
                todo.append(layer)
                record.setdefault(stage, {})[layer] = {"action": "computed", "why": why}
        compute[stage] = tuple(todo)
    return compute, {"previous": str(previous.path) if previous else None,
                     "previous_run_id": previous.manifest["run_id"] if previous else None, "stages": record}


def _why_computed(previous: Catalog | None, stage: Stage, layer: str, parts: dict[str, str]) -> str | None:
    """Why the result must be computed, or None when the previous catalog's result still holds."""
    if previous is None:
        return "no previous catalog"
    if not stage.reuses():
        return "the stage does not read results back from a catalog"
    m, name = previous.manifest, stage.name
    if m["fingerprints"].get("scheme") != SCHEME:
        return "the previous catalog's fingerprints were made by an older neuron-catalog, in another way"
    if name not in m["stages_done"]:
        return f"the previous catalog has no {name} results"
    old = m["fingerprints"].get("inputs", {}).get(name, {}).get(layer)
    if old is None:
        return f"the previous catalog has no {name} results for this layer"
    changed = [key for key in parts if old.get(key) != parts[key]]
    if changed:
        why = {**_WHY, **stage.reasons}
        return "; ".join(why.get(key, f"{key} changed") for key in changed)
    missing = [kind.group for kind in stage.arrays if not previous.has_array(kind.group, layer)]
    if missing:
        return f"the previous catalog lacks its {', '.join(missing)} arrays"
    return None


def load(plan: RunPlan, stages: Stages, previous: Catalog | None) -> dict[str, Any]:
    """Per stage, its results for the layers it does not compute, read from the previous catalog before anything
    is written (the previous catalog may be the one this run replaces); stages with nothing to reuse are absent."""
    if previous is None or plan.compute is None:
        return {}
    out = {}
    for name, stage in stages.items():
        keep = [layer for layer in plan.fingerprints["inputs"][name] if layer not in plan.compute.get(name, ())]
        if keep:
            out[name] = stage.load(plan, previous, keep)
    return out


def priors(plan: RunPlan, stages: Stages, previous: Catalog | None) -> dict[str, Any]:
    """Per stage that computes something, what it may start from in the previous catalog (Stage.prior)."""
    if previous is None or plan.compute is None:
        return {}
    found = {name: stage.prior(plan, previous) for name, stage in stages.items() if plan.compute.get(name)}
    return {name: value for name, value in found.items() if value is not None}
