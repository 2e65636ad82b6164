"""The activation spectrum of each unit (Distill, "Investigating a single neuron"): dataset examples at evenly
spaced quantiles of the unit's distribution of spatial maxima over the data set's images.

Quantile levels are q_i = (i + 0.5) / Q. For each level the k images whose spatial max (the statistic top-k
ranks by) is nearest the empirical quantile value (np.quantile, linear) are chosen, ties broken by the smaller
image id. Choosing needs every image's max, so partials carry them (`Maxima`) as the batches delivered them;
merging only lists the chunks, and `select` concatenates them a block of units at a time. Nothing the result
depends on follows the order of the chunks, so it is the same whatever the number of shards or workers.

Memory: images x units x (4 bytes of max + 1, 2 or 4 bytes of position, by the map's size) on the driver,
held until the layer is finalized (`spectrum_bytes`); the stage refuses a run above spectrum_memory_mb.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK_BYTES = 32 << 20  # float64 values of a block of units, over all images, handled at once in `select`


def position_dtype(positions: int) -> np.dtype:
    """The smallest unsigned integer holding a flat index into a map of `positions` values."""
    return np.min_scalar_type(max(positions - 1, 0))


def spectrum_bytes(images: int, units: int, positions: int) -> int:
    """Driver memory the per-image maxima and their positions of one layer take."""
    return images * units * (4 + position_dtype(positions).itemsize)


@dataclass
class Maxima:
    """Each image's spatial max per unit and its first arg-max, in chunks of images (any order)."""

    image_ids: list[np.ndarray]  # int64 [n] per chunk
    values: list[np.ndarray]  # float32 [n, C]
    positions: list[np.ndarray]  # position_dtype [n, C]: flat index into the layer's H*W map

    @classmethod
    def none(cls) -> Maxima:
        return cls([], [], [])

    @classmethod
    def of_batch(cls, vmax: torch.Tensor, argmax: torch.Tensor, image_ids: np.ndarray, positions: int) -> Maxima:
        """A batch's [N, C] maxima and arg-max positions."""
        return cls([np.asarray(image_ids, np.int64)], [vmax.cpu().numpy().astype(np.float32, copy=False)],
                   [argmax.cpu().numpy().astype(position_dtype(positions))])

    def merged(self, other: Maxima) -> Maxima:
        return Maxima(self.image_ids + other.image_ids, self.values + other.values, self.positions + other.positions)

    def compacted(self) -> Maxima:
        """One chunk (fewer, larger objects to ship and pickle)."""
        if len(self.image_ids) < 2:
            return self
        return Maxima([np.concatenate(self.image_ids)], [np.concatenate(self.values)], [np.concatenate(self.positions)])


@dataclass(frozen=True)
class Selection:
    """The chosen examples of every unit: [C, Q, k'] with k' = min(k, images), nearest first within a level."""

    levels: np.ndarray  # float64 [Q]
    quantile_value: np.ndarray  # float64 [C, Q] the empirical quantile of each unit's maxima
    image_id: np.ndarray  # int64 [C, Q, k']
    value: np.ndarray  # float32 [C, Q, k'] each chosen image's spatial max
    position: np.ndarray  # int64 [C, Q, k']


def levels(quantiles: int) -> np.ndarray:
    """q_i = (i + 0.5) / Q, i = 0..Q-1."""
    return (np.arange(quantiles) + 0.5) / quantiles


def select(maxima: Maxima, quantiles: int, k: int) -> Selection:
    """Per unit and level, the k images nearest the unit's empirical quantile (ties: the smaller image id)."""
    ids = np.concatenate(maxima.image_ids)
    n, c = len(ids), maxima.values[0].shape[1]
    q, kk = levels(quantiles), min(k, n)
    out_q = np.zeros((c, len(q)))
    out_id, out_value, out_pos = (np.zeros((c, len(q), kk), t) for t in (np.int64, np.float32, np.int64))
    block = max(1, BLOCK_BYTES // max(8 * n, 1))
    for start in range(0, c, block):
        stop = min(start + block, c)
        values = np.concatenate([v[:, start:stop] for v in maxima.values])  # [N, b] float32
        positions = np.concatenate([p[:, start:stop] for p in maxima.positions])
        wide = values.astype(np.float64)
        targets = np.quantile(values, q, axis=0)  # [Q, b]
        out_q[start:stop] = targets.T
        cols = np.arange(stop - start)[:, None]
        for i, target in enumerate(targets):
            rows = nearest(np.abs(wide - target), ids, kk)  # [b, k']
            out_id[start:stop, i] = ids[rows]
            out_value[start:stop, i] = values[rows, cols]
            out_pos[start:stop, i] = positions[rows, cols]
    return Selection(q, out_q, out_id, out_value, out_pos)


def nearest(distance: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Row indices [b, k] of the k smallest distances of each column of [N, b], ties to the smaller id."""
    kth = np.partition(distance, k - 1, axis=0)[k - 1]  # [b]: every column has at least k rows within it
    unit, row = np.nonzero((distance <= kth).T)
    order = np.lexsort((ids[row], distance[row, unit], unit))
    unit, row = unit[order], row[order]
    rank = np.arange(len(unit)) - np.searchsorted(unit, unit)  # place within its unit
    return row[rank < k].reshape(distance.shape[1], k)
