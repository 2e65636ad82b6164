"""The similarity stage's comparisons and result, as its writer reads them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    layer: str  # the query units' layer
    other: str  # the candidates' layer
    kind: str  # ACTIVATION | WEIGHT


@dataclass(frozen=True)
class Block:
    comparison: Comparison
    start: int  # query units start..stop
    stop: int


@dataclass
class SimilarityResult:
    comparisons: list[Comparison]
    neighbours: dict[Comparison, tuple[np.ndarray, np.ndarray]]  # (indices [units, k], scores [units, k]); -1 / NaN pad
    without: dict[tuple[str, str], int]  # (layer, kind) -> units with no direction (constant, or all-zero weights)
    probe_images: int
