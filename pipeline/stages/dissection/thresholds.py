"""Network Dissection's first pass: per unit, the threshold at its top `quantile` of raw activations.

The value `t` such that a fraction `quantile` of all raw activations (every position of every
image, not upsampled) lies above it: the m-th largest value, m = ceil(quantile * total_count).
Exact: a partial keeps each unit's largest values (at most m; fewer when a floor from other shards
proves the rest cannot matter). radix.py finds the same values in bounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def top_count(quantile: float, total_count: int) -> int:
    """m = ceil(quantile * total_count), at least 1 and at most total_count (rounding noise ignored)."""
    return int(min(max(total_count, 1), max(1, math.ceil(round(quantile * total_count, 6)))))


@dataclass
class ThresholdPartial:
    """Per unit, the largest values seen, in no particular order (-inf: no value): float32 [U, <= capacity].

    Memory: U * capacity float32, capacity = ceil(quantile * total_count); e.g. 512 units at 7x7
    over Broden's 63,305 images keep 512 * 15,510 values (32 MB); 64 units at 56x56, 254 MB.
    """

    top: np.ndarray
    count: int  # activations seen per unit
    capacity: int
    quantile: float

    @classmethod
    def empty(cls, units: int, quantile: float, total_count: int) -> ThresholdPartial:
        return cls(np.zeros((units, 0), np.float32), 0, top_count(quantile, total_count), quantile)


def _keep_top(values: np.ndarray, capacity: int, finite: int | None = None) -> np.ndarray:
    """Each row's `capacity` largest values, unordered; columns that would only hold -inf are dropped
    (`finite`: the most finite values in a row, when the caller knows it).

    np.partition (introselect) is linear; torch.topk sorts, about 4x slower for a large `capacity`."""
    values = np.asarray(values, dtype=np.float32)
    if finite is None:
        finite = int(np.isfinite(values).sum(axis=1).max()) if values.size else 0  # pruned values are -inf
    keep = min(capacity, finite)
    if keep == values.shape[1]:
        return values
    return np.ascontiguousarray(np.partition(values, values.shape[1] - keep, axis=1)[:, values.shape[1] - keep:])


def _flat(acts: torch.Tensor) -> torch.Tensor:
    n, units = acts.shape[:2]
    return acts.detach().float().reshape(n, units, -1).transpose(0, 1).reshape(units, -1)


def _above(values: torch.Tensor, floor: np.ndarray | None) -> torch.Tensor:
    """`values` with entries at or below `floor` [U] set to -inf (unchanged without a floor)."""
    if floor is None:
        return values
    low = torch.tensor(np.asarray(floor, np.float32), device=values.device)[:, None]
    return values.masked_fill(values <= low, float("-inf"))


def compute_thresholds(acts: torch.Tensor, quantile: float, total_count: int,
                       floor: np.ndarray | None = None) -> ThresholdPartial:
    """Pass 1 over a batch `acts` [N, U, h, w]; `total_count` = images x h x w of the whole data set.

    `floor` [U] (optional): values at or below it are not kept. It must be at most the unit's final
    threshold, e.g. the `capacity`-th largest value of a merged partial of other images: such values
    can never be among the top m, so the result stays exact while the partials stay small.
    """
    flat = _flat(acts)
    partial = ThresholdPartial.empty(flat.shape[0], quantile, total_count)
    partial.top, partial.count = _keep_top(_above(flat, floor).cpu().numpy(), partial.capacity), flat.shape[1]
    return partial


def _values_above(x: torch.Tensor, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [U, most kept], int [U]): each unit's values of `x` [N, U, hw] above its floor, padded
    with -inf, and how many there are.
    Unit-major, so that a boolean selection returns them already grouped by unit, row after row."""
    units = x.shape[1]
    flat = x.transpose(0, 1).reshape(units, -1)
    if flat.device.type == "cpu":  # NumPy's boolean reductions are the faster ones there
        flat = flat.numpy()
        keep = flat > np.asarray(floor, np.float32)[:, None]
        counts, vals = np.count_nonzero(keep, axis=1), flat[keep]
    else:  # select on the device: only the kept values travel
        keep = flat > torch.as_tensor(np.asarray(floor, np.float32), device=flat.device)[:, None]
        counts, vals = keep.sum(dim=1).cpu().numpy(), flat[keep].cpu().numpy()
    out = np.full((units, int(counts.max(initial=0))), -np.inf, np.float32)
    out[np.arange(out.shape[1]) < counts[:, None]] = vals
    return out, counts


class TopValues:
    """Pass 1 over many batches of one layer: values are buffered unsorted and the top `capacity`
    selected only when the buffer outgrows it; from then on, values at or below the selection's
    `capacity`-th largest (or an outside `floor`) are dropped as they arrive. Same result as merging
    `compute_thresholds` of every batch, without sorting the kept values once per batch."""

    def __init__(self, units: int, quantile: float, total_count: int, floor: np.ndarray | None = None):
        self.partial = ThresholdPartial.empty(units, quantile, total_count)
        self.floor, self.count, self.buffer, self.width = floor, 0, [], 0
        self.finite = np.zeros(units, np.int64)  # per unit, finite values in partial.top and the buffer

    def add(self, acts: torch.Tensor) -> None:
        n, units = acts.shape[:2]
        x = acts.detach().float().reshape(n, units, -1)
        self.count += n * x.shape[2]
        floors = [f for f in (self.floor, pruning_floor(self.partial)) if f is not None]
        if floors:
            values, counts = _values_above(x, np.maximum.reduce(floors))
        else:
            values = x.transpose(0, 1).reshape(units, -1).cpu().numpy()
            counts = np.count_nonzero(values > -np.inf, axis=1)  # +inf is a value; NaN and the padding are not
        self.buffer.append(values)
        self.finite += counts
        self.width += values.shape[1]
        if self.width > self.partial.capacity:
            self._select()

    def _select(self) -> None:
        if self.buffer:
            self.partial.top = _keep_top(np.concatenate([self.partial.top, *self.buffer], axis=1), self.partial.capacity,
                                         int(self.finite.max(initial=0)))
            self.finite = np.minimum(self.finite, self.partial.capacity)
            self.buffer, self.width = [], 0

    def result(self) -> ThresholdPartial:
        self._select()
        self.partial.count = self.count
        return self.partial


def merge_thresholds(a: ThresholdPartial, b: ThresholdPartial) -> ThresholdPartial:
    """Top `capacity` of both; associative and commutative (the kept multiset is unique)."""
    if (a.capacity, a.quantile) != (b.capacity, b.quantile) or a.top.shape[0] != b.top.shape[0]:
        raise ValueError("threshold partials of different units, quantile or total count")
    both = np.concatenate([a.top, b.top], axis=1)
    return ThresholdPartial(_keep_top(both, a.capacity), a.count + b.count, a.capacity, a.quantile)


def pruning_floor(partial: ThresholdPartial) -> np.ndarray | None:
    """A valid `floor` for other images' partials: each unit's `capacity`-th largest value (-inf when
    fewer are known), or None while no unit has that many."""
    if partial.top.shape[1] < partial.capacity:
        return None
    return partial.top.min(axis=1)


def finalize_thresholds(partial: ThresholdPartial) -> np.ndarray:
    """float32 [U]: the m-th largest value, m = ceil(quantile * activations seen).

    Fewer activations than planned (skipped images) give a smaller m, still within the kept values.
    """
    if partial.count == 0:
        raise ValueError("no activations seen: cannot compute thresholds")
    m, width = top_count(partial.quantile, partial.count), partial.top.shape[1]
    if m > width:
        raise ValueError(f"{partial.count} activations seen per unit, more than the total count the partial was sized for")
    threshold = np.partition(partial.top, width - m, axis=1)[:, width - m].copy()
    if not np.isfinite(threshold).all():
        raise ValueError("fewer values kept than the quantile needs: a pruning floor was above the threshold")
    return threshold
