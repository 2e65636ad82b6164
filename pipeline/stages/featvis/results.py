"""The featvis stage's part of the plan and its result, as its writer reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from catalog_schema import Catalog
from pipeline.inputs.models import LayerInfo
from pipeline.stages.featvis import optimize, projections
from pipeline.stages.featvis.settings import FeatvisSettings


@dataclass(frozen=True)
class FeatvisTask:
    """Units of one layer rendered together (whole optimization batches)."""

    index: int
    info: LayerInfo  # the layer, and where its output keeps the units
    layer_index: int  # position among the job's layers: part of each image's seed
    units: tuple[int, ...]
    batch: int  # units optimized together: the same for every task of the layer (a short one is padded)

    @property
    def layer(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class FeatvisPart:
    settings: FeatvisSettings
    tasks: tuple[FeatvisTask, ...]
    filters: dict[str, np.ndarray]  # layer -> uint8 [units, kh, kw, 3], for layers that convolve the input
    projection_caveat: str | None = None  # what the projections are on a model that is not a ReLU network


@dataclass
class FeatvisResult:
    rendered: dict[int, optimize.FeatvisChunk]  # task index -> its units' images and scores (computed layers)
    projected: dict[str, list[projections.ProjectionBatch]]  # computed layers' projections
    reused: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # layer -> FEATVIS_COLUMNS of the previous catalog
    previous: Catalog | None = None
    projection_shape: tuple[int, int] = (0, 0)  # (top examples per unit, crop pixels): the activations' k and patch
