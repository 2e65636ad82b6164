"""The stages, in pipeline order: each is one package behind the `Stage` protocol (pipeline/stages/protocol.py).

Only the entry points import this registry (the command line, `run_job`, tests and benchmarks); they hand
the stage objects to the plan, the reuse decisions and the writer, which name no stage. Adding a stage:
a package pipeline/stages/<name>/ with a `Stage` subclass and one line below (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import UserError
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.attribution.stage import AttributionStage
from pipeline.stages.class_pages.stage import ClassPagesStage
from pipeline.stages.connections.stage import ConnectionsStage
from pipeline.stages.dictionary.stage import DictionaryStage
from pipeline.stages.dissection.stage import DissectionStage
from pipeline.stages.featvis.stage import FeatvisStage
from pipeline.stages.interventions.stage import InterventionsStage
from pipeline.stages.protocol import Stage
from pipeline.stages.shapley.stage import ShapleyStage
from pipeline.stages.similarity.stage import SimilarityStage
from pipeline.stages.unit_map.stage import MapStage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    DictionaryStage(),  # first: the stages after it read its features as a layer
    ActivationsStage(),
    FeatvisStage(),
    DissectionStage(),
    ShapleyStage(),
    SimilarityStage(),
    ConnectionsStage(),
    MapStage(),
    ClassPagesStage(),
    AttributionStage(),
    InterventionsStage(),
)}


def selected_stages(requested: Iterable[str]) -> dict[str, Stage]:
    """The requested stages and every stage they need, in pipeline order; the activations stage always (the units
    table and the manifest's layers come from it)."""
    wanted = set(requested)
    unknown = sorted(wanted - set(STAGES))
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}.")
    wanted.add(ActivationsStage.name)
    todo = list(wanted)
    while todo:
        for need in STAGES[todo.pop()].needs:
            if need.name not in wanted:
                wanted.add(need.name)
                todo.append(need.name)
    return {name: stage for name, stage in STAGES.items() if name in wanted}
