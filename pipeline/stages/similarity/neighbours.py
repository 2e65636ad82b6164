"""Exact nearest units by blocked matrix products: correlation of activations, cosine of weights.

Scores of a block of query units against every candidate come from one float32 product; the best
`k + SPARE` are scored again in float64 and ordered by (score to 12 decimals, largest first; unit number), so the
neighbours and their scores do not depend on the block size, the device or the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPARE = 8  # candidates kept beyond k before the float64 re-scoring (float32 near-ties may swap)
TIE_DIGITS = 12
BLOCK_SCORES = 1 << 25  # query rows x candidates scored at once (128 MiB of float32)


@dataclass(frozen=True)
class Rows:
    """Unit vectors ready for dot products: `unit` (float64 [units, d]) and which rows have a direction at all."""

    unit: np.ndarray
    valid: np.ndarray  # bool [units]: False for a constant (dead) unit or all-zero weights: no neighbours


def correlation_rows(values: np.ndarray) -> Rows:
    """Rows centred and scaled to norm 1, so that a dot product is the Pearson correlation; a row that does not
    vary (relative to its magnitude) has no correlation with anything."""
    x = np.asarray(values, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return _normalized(x, np.abs(values).max(axis=1, initial=0.0))


def cosine_rows(values: np.ndarray) -> Rows:
    """Rows scaled to norm 1 (dot product = cosine similarity); an all-zero row has none."""
    x = np.asarray(values, np.float64).reshape(len(values), -1)
    return _normalized(x, np.abs(x).max(axis=1, initial=0.0))


def _normalized(x: np.ndarray, scale: np.ndarray) -> Rows:
    norm = np.linalg.norm(x, axis=1)
    valid = (norm > 1e-6 * np.sqrt(max(x.shape[1], 1)) * scale) & (norm > 0) & np.isfinite(norm)
    unit = np.zeros_like(x)
    unit[valid] = x[valid] / norm[valid, None]
    return Rows(unit, valid)


def nearest(queries: Rows, candidates: Rows, k: int, start: int = 0, stop: int | None = None,
            same: bool = False, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For query rows start..stop: (int64 [n, k] candidate indices, float64 [n, k] scores), best first; -1 and NaN
    pad where fewer than k candidates have a direction. `same`: queries and candidates are one set (a unit is
    not its own neighbour)."""
    stop = len(queries.unit) if stop is None else stop
    n, m = stop - start, len(candidates.unit)
    index = np.full((n, k), -1, np.int64)
    score = np.full((n, k), np.nan)
    take = min(k + SPARE, int(candidates.valid.sum()) - (1 if same else 0))
    if n <= 0 or take <= 0 or k <= 0:
        return index, score
    cand = torch.from_numpy(candidates.unit.astype(np.float32)).to(device)
    invalid = torch.as_tensor(~candidates.valid, device=device)
    step = max(1, BLOCK_SCORES // max(m, 1))
    for s in range(start, stop, step):
        e = min(stop, s + step)
        q = torch.from_numpy(queries.unit[s:e].astype(np.float32)).to(device)
        scores = q @ cand.T
        scores[:, invalid] = -torch.inf
        if same:
            rows = torch.arange(e - s, device=device)
            scores[rows, rows + s] = -torch.inf
        picked = torch.topk(scores, take, dim=1).indices.cpu().numpy()
        _rescore(queries.unit[s:e], candidates.unit, picked, k, index[s - start:e - start], score[s - start:e - start])
    index[~queries.valid[start:stop]] = -1
    score[~queries.valid[start:stop]] = np.nan
    return index, score


def _rescore(q: np.ndarray, cand: np.ndarray, picked: np.ndarray, k: int, index: np.ndarray, score: np.ndarray) -> None:
    """Exact float64 scores of the picked candidates, ordered by score then index; the best k into index/score.
    Scores equal to TIE_DIGITS decimals are ties (twin units score the same up to rounding): the lower unit first."""
    exact = np.einsum("nd,nkd->nk", q, cand[picked])
    order = np.lexsort((picked, -np.round(exact, TIE_DIGITS)), axis=1)
    keep = min(k, picked.shape[1])
    index[:, :keep] = np.take_along_axis(picked, order, axis=1)[:, :keep]
    score[:, :keep] = np.take_along_axis(exact, order, axis=1)[:, :keep]
