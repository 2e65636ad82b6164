"""What the activations stage hands on: to its writer, and to the stages that read activations."""

from __future__ import annotations

from dataclasses import dataclass, field

from catalog_schema import Catalog
from pipeline.stages.activations import compute
from pipeline.stages.activations.crops import CropBatch


@dataclass
class ActivationsResult:
    layers: dict[str, compute.LayerResult]  # every layer, computed or reused
    crops: dict[str, list[CropBatch]]  # the example (and spectrum) crops of the computed layers
    skipped: list[tuple[int, str]]  # images that could not be read
    reused: set[str] = field(default_factory=set)  # layers read back from the previous catalog
    previous: Catalog | None = None
    k: int = 0  # top (and bottom) examples per unit
    patch: int = 0  # pixels of the stored crops ([stages.activations] patch_size): the featvis projections' size too
