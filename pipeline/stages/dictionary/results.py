"""The dictionary stage's part of the plan and its result, as its writer reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.inputs.features import Dictionary
from pipeline.inputs.images import ImageRecord
from pipeline.inputs.models import LayerInfo
from pipeline.stages.dictionary.quality import QualityPartial
from pipeline.stages.dictionary.sae import TrainSettings


@dataclass(frozen=True)
class DictionaryTask:
    """One dictionary trained on one actor: a layer, its training settings, and which seed of the layer (0: the
    cataloged one, 1: the stability twin)."""

    info: LayerInfo
    train: TrainSettings
    replica: int


@dataclass(frozen=True)
class DictionaryPart:
    tasks: tuple[DictionaryTask, ...]
    batch: int  # vectors per step
    buffer: int  # vectors shuffled together
    train_images: tuple[ImageRecord, ...]  # what the dictionaries learn from, in every epoch's own seeded order
    eval_images: tuple[ImageRecord, ...]  # what their quality is measured on


@dataclass
class DictionaryResult:
    dictionaries: dict[str, Dictionary]  # layer -> the cataloged dictionary
    quality: dict[str, QualityPartial]  # layer -> its statistics on the evaluation images
    stability: dict[str, float | None]  # layer -> mean matched cosine with the twin (None: not trained)
    recovery: dict[str, dict]  # layer -> loss_recovered, accuracy, accuracy_reconstructed (None: no labels)
    layouts: dict[str, str] = field(default_factory=dict)  # layer -> where its output keeps its channels
    measured: dict[str, dict] = field(default_factory=dict)  # layer -> its quality row and histogram as a previous
    # catalog's manifest holds them (a dictionary reused, not trained)
