"""Banzhaf values by maximum sample reuse (Wang & Jia, "Data Banzhaf", AISTATS 2023).

A sample is one random coalition: each player stays with probability `keep`, independently, and is
mean-ablated otherwise. One evaluation V(S) updates every player's estimate at once:

    value(i) = mean of V(S) over the samples that keep i  -  mean of V(S) over those that remove i,

so the cost no longer grows with the number of players. With keep = 0.5 this is the Banzhaf value
(every coalition of the others equally likely); another `keep` gives the weighted Banzhaf value of
that probability (Li & Yu, 2023), a semivalue that looks at coalitions of about `keep` of the units.
Intervals come from a Poisson bootstrap over the samples (seeded, so the same for any workers).
"""

from __future__ import annotations

import numpy as np

from pipeline.stages.shapley.estimator import Estimate

PLAYER_BLOCK = 4096  # players per matrix product (bounds memory for models with many units)


def removed_coalition(seed: int, index: int, players: int, keep: float) -> np.ndarray:
    """bool [players]: the units sample `index` removes (its own seeded draw, whoever evaluates it)."""
    return np.random.default_rng([seed, 17, index]).random(players) >= keep


def coalitions(seed: int, start: int, stop: int, players: int, keep: float) -> np.ndarray:
    """bool [stop - start, players]: samples start..stop-1."""
    return np.stack([removed_coalition(seed, i, players, keep) for i in range(start, stop)]) if stop > start \
        else np.zeros((0, players), bool)


def banzhaf_values(values: np.ndarray, players: int, seed: int, keep: float, bootstrap: int,
                   ci_delta: float) -> Estimate:
    """The MSR estimate from V of samples 0..m-1 (float64 [m, M]: whole metric, then per class), with
    percentile intervals at 1 - ci_delta from `bootstrap` Poisson resamplings of the samples."""
    m, columns = values.shape
    kept = ~coalitions(seed, 0, m, players, keep)
    weights = np.random.default_rng([seed, 19]).poisson(1.0, (bootstrap, m)).astype(np.float32)
    value = np.full((players, columns), np.nan)
    low, high = value.copy(), value.copy()
    for s in range(0, players, PLAYER_BLOCK):
        block = kept[:, s:s + PLAYER_BLOCK]
        value[s:s + PLAYER_BLOCK] = _difference(block.astype(np.float64), values, np.ones((1, m)))[0]
        if bootstrap:
            for c in range(columns):
                resampled = _difference(block.astype(np.float32), values[:, c:c + 1].astype(np.float32), weights)
                with np.errstate(invalid="ignore"):
                    q = np.nanquantile(resampled[..., 0], [ci_delta / 2, 1 - ci_delta / 2], axis=0) \
                        if np.isfinite(resampled).any() else np.full((2, block.shape[1]), np.nan)
                low[s:s + PLAYER_BLOCK, c], high[s:s + PLAYER_BLOCK, c] = q
    samples = np.full(players, m, np.int64)
    return Estimate("banzhaf", value, low, high, samples, m, {"samples": m, "keep": keep, "bootstrap": bootstrap})


def _difference(kept: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[R, players, M]: for each weighting of the samples (R rows of [m] weights), the weighted mean of V over the
    samples that keep each player minus that over the samples that remove it (NaN where one side is empty)."""
    n_in = weights @ kept  # [R, players]
    n_out = weights.sum(axis=1, keepdims=True) - n_in
    out = []
    for c in range(values.shape[1]):
        wv = weights * values[:, c]  # [R, m]
        total_in = wv @ kept
        total = wv.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where((n_in > 0) & (n_out > 0), total_in / n_in - (total - total_in) / n_out, np.nan))
    return np.stack(out, axis=-1)
