"""Interpretable Basis Decomposition (Zhou et al., ECCV 2018): a class's weight vector at the classifier's input as a
few concept vectors plus what they leave unexplained.

A concept's vector is a linear probe of the layer's channels: the mean feature at the positions the concept covers
(its Broden masks sampled at the centres of the feature grid's cells; an image-level label covers every position)
minus the mean feature over every position, scaled to length 1. IBD trains a logistic probe per concept by SGD; the
mean difference is its closed form (nearest centroid), streamed in one pass and merged exactly across shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.stages.dissection.concept_masks import LabelSpace

EPS = 1e-9


@dataclass
class ConceptSums:
    """Sums of a layer's features: at each concept's positions, and over every position."""

    sums: np.ndarray  # float64 [L, C]
    counts: np.ndarray  # int64 [L] positions the concept covers
    total: np.ndarray  # float64 [C]
    positions: int = 0

    @classmethod
    def empty(cls, labels: int, channels: int) -> ConceptSums:
        return cls(np.zeros((labels, channels)), np.zeros(labels, np.int64), np.zeros(channels))

    def merged(self, other: ConceptSums) -> ConceptSums:
        return ConceptSums(self.sums + other.sums, self.counts + other.counts, self.total + other.total,
                           self.positions + other.positions)

    def add(self, features: np.ndarray, masks: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[int]],
            space: LabelSpace) -> None:
        """One image: `features` float [C, h, w], its masks (category -> label numbers [planes, sh, sw]) and
        image-level labels (category -> label numbers)."""
        c, h, w = features.shape
        flat = features.reshape(c, h * w).T.astype(np.float64)  # [positions, C]
        pairs = []
        for category, planes in masks.items():
            if planes is None or not np.size(planes):
                continue
            cells = _cell_centres(np.asarray(planes), h, w)  # [planes, h, w]
            index = space.indices(space.category_names.index(category), cells).reshape(len(cells), -1)
            plane, position = np.nonzero(index >= 0)
            pairs.append(np.stack([index[plane, position], position], axis=1))
        found = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)
        np.add.at(self.sums, found[:, 0], flat[found[:, 1]])
        np.add.at(self.counts, found[:, 0], 1)
        whole = flat.sum(axis=0)
        for category, numbers in labels.items():
            for label in set(space.indices(space.category_names.index(category), np.asarray(list(numbers))).tolist()):
                if label >= 0:
                    self.sums[label] += whole
                    self.counts[label] += h * w
        self.total += whole
        self.positions += h * w


def _cell_centres(planes: np.ndarray, h: int, w: int) -> np.ndarray:
    """The mask values at the centre of each of the h x w cells (nearest neighbour)."""
    sh, sw = planes.shape[-2:]
    rows = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
    return planes[:, rows][:, :, cols]


def concept_vectors(s: ConceptSums) -> tuple[np.ndarray, np.ndarray]:
    """float32 [L, C] unit rows and bool [L]: which concepts have a vector (covered somewhere, not everywhere alike)."""
    mean = s.total / max(s.positions, 1)
    diff = s.sums / np.maximum(s.counts, 1)[:, None] - mean
    norm = np.linalg.norm(diff, axis=1)
    valid = (s.counts > 0) & (norm > EPS * max(1.0, float(np.abs(mean).max(initial=0.0))))
    out = np.zeros_like(diff)
    out[valid] = diff[valid] / norm[valid, None]
    return out.astype(np.float32), valid


@dataclass(frozen=True)
class Decomposition:
    concepts: list[int]  # the chosen concepts, in the order chosen
    coefficients: list[float]  # the class vector's coordinates on them (least squares on the chosen vectors)
    explained: list[float]  # after each step, the share of the class vector's squared norm explained
    residual: float  # the share left unexplained: 1 - explained[-1] (1 with no concept)


def decompose(weight: np.ndarray, vectors: np.ndarray, valid: np.ndarray, steps: int) -> Decomposition:
    """Greedy Gram-Schmidt: at each step the concept whose component orthogonal to those chosen best explains the
    residual (positively: a concept that speaks for the class), until `steps` or none helps; ties to the lower index."""
    w = np.asarray(weight, np.float64)
    candidates = np.flatnonzero(valid)
    v = np.asarray(vectors, np.float64)[candidates]
    norm2 = float(w @ w)
    basis = np.zeros((0, len(w)))
    chosen: list[int] = []
    explained: list[float] = []
    residual = w.copy()
    open_ = np.ones(len(candidates), bool)
    for _ in range(steps):
        u = v - (v @ basis.T) @ basis
        length = np.linalg.norm(u, axis=1)
        usable = open_ & (length > 1e-6)
        score = np.where(usable, u @ residual / np.where(usable, length, 1.0), -np.inf)
        best = int(np.argmax(score)) if len(score) else -1
        if best < 0 or score[best] <= EPS * np.sqrt(norm2):
            break
        q = u[best] / length[best]
        chosen.append(int(candidates[best]))
        open_[best] = False
        basis = np.vstack([basis, q])
        residual = residual - (residual @ q) * q
        explained.append(1.0 - float(residual @ residual) / norm2 if norm2 > 0 else 0.0)
    picked = np.asarray(vectors, np.float64)[chosen]
    coefficients = np.linalg.lstsq(picked.T, w, rcond=None)[0].tolist() if chosen else []
    return Decomposition(chosen, coefficients, explained, 1.0 - explained[-1] if explained else 1.0)
