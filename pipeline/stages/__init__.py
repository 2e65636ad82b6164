"""The stages, in pipeline order: each is one package behind the `Stage` protocol (protocol.py).

Adding a stage: a package pipeline/stages/<name>/ with a `Stage` subclass, one line below, and
tests (docs/ARCHITECTURE.md walks through an example).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import UserError
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.dissection.stage import DissectionStage
from pipeline.stages.featvis.stage import FeatvisStage
from pipeline.stages.protocol import Stage
from pipeline.stages.shapley.stage import ShapleyStage
from pipeline.stages.similarity.stage import SimilarityStage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    ActivationsStage(),
    FeatvisStage(),
    DissectionStage(),
    ShapleyStage(),
    SimilarityStage(),
)}


def selected_stages(requested: Iterable[str]) -> tuple[str, ...]:
    """The requested stages and every stage they need, in pipeline order."""
    wanted = set(requested)
    unknown = sorted(wanted - set(STAGES))
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}.")
    todo = list(wanted)
    while todo:
        for need in STAGES[todo.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                todo.append(need)
    return tuple(name for name in STAGES if name in wanted)
