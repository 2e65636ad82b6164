"""What the class_pages stage plans and hands to its writer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.inputs.broden import Broden
from pipeline.inputs.models import LayerInfo
from pipeline.stages.class_pages.evaluate import EvalPartial
from pipeline.stages.class_pages.ibd import Decomposition
from pipeline.stages.dissection.stage import ConceptShard


@dataclass(frozen=True)
class ClassesPart:
    layer: LayerInfo
    head: str
    weight: np.ndarray  # float64 [classes, C]: each class's vector in the final Linear
    classes: tuple[str, ...]
    top: int
    broden: Broden | None  # the concept data set (IBD), when the job has one
    shards: tuple[ConceptShard, ...] = ()


@dataclass
class ClassesResult:
    evaluated: EvalPartial
    pictures: list[tuple[np.ndarray, np.ndarray]]  # per class: (top images, their Grad-CAM)
    vectors: np.ndarray | None  # float32 [concepts, C] (None without a concept data set)
    valid: np.ndarray | None
    names: tuple[tuple[str, ...], tuple[str, ...]] | None  # (concept names, their categories)
    decompositions: list[Decomposition]  # per class ([] without a concept data set)
