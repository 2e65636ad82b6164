"""Shapley values by maximum sample reuse, adjusted by a fitted surrogate game.

A sample is one random coalition whose keep probability p is itself drawn from U(0, 1) (stratified
over each round of coalitions); each unit then stays with probability p. Averaged over p, the weighted
Banzhaf values are the Shapley value, and every evaluation V(S) informs every player, so the cost does
not grow with the number of players. The plain differences of means are noisy (V changes more with
the size of S than with any one unit), so, with cross-fitting (in the spirit of Witter et al.,
"Regression-adjusted Monte Carlo estimators for Shapley values", 2025):

1. on one half of the samples, fit per column a surrogate game
   V^(S) = lo + (hi - lo) * sigmoid(a(u) + sum over j in S of (b_j + g_j * u)),  u = |S| / players,
   a(u) a cubic (a model whose units matter most where the network is neither intact nor dead);
2. its Shapley value, from many permutations of the surrogate (cumulative sums: no network forward);
3. plus the Shapley value of the residual V - V^ on the other half, by differences of means in
   RESIDUAL_BINS bins of coalition size; then the halves swap and the two estimates are averaged.

Intervals: a Poisson bootstrap of the residual term with the surrogates held fixed (seeded), widened in
quadrature by the surrogate walks' own standard error.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch

from pipeline.stages.shapley.estimator import Estimate

RESIDUAL_BINS = 8  # coalition-size bins of the residual correction
FOLDS = 2  # cross-fitting: each fold's residual is taken against a surrogate fitted on the other folds
SURROGATE_PERMUTATIONS = 2000  # at least this many permutations walked on the surrogate (antithetic pairs) ...
SURROGATE_BUDGET = 2 ** 27  # ... and more while permutations * players * columns stays under this ...
SURROGATE_MOST = 20000  # ... up to this many
FIT_STEPS = 400  # L-BFGS iterations of the surrogate fit
RIDGE = 1e-3  # penalty on the per-unit weights (times their mean square)
STRATA = 256  # keep probabilities are stratified over each block of this many coalitions


def keep_probability(seed: int, index: int) -> float:
    """Coalition `index`'s keep probability: one of STRATA strata of U(0, 1) per block, seeded per block."""
    block, slot = divmod(index, STRATA)
    order = np.random.default_rng([seed, 29, block]).permutation(STRATA)
    return float((order[slot] + np.random.default_rng([seed, 31, index]).random()) / STRATA)


def removed_coalition(seed: int, index: int, players: int) -> np.ndarray:
    """bool [players]: the units coalition `index` removes (its own seeded draw, whoever evaluates it)."""
    keep = keep_probability(seed, index)
    return np.random.default_rng([seed, 37, index]).random(players) >= keep


def coalitions(seed: int, start: int, stop: int, players: int) -> np.ndarray:
    """bool [stop - start, players]: coalitions start..stop-1."""
    return np.stack([removed_coalition(seed, i, players) for i in range(start, stop)]) if stop > start \
        else np.zeros((0, players), bool)


class Surrogate:
    """The fitted game V^ of the module docstring, one set of weights per column."""

    def __init__(self, kept: np.ndarray, values: np.ndarray, low: np.ndarray, high: np.ndarray):
        x = torch.as_tensor(kept, dtype=torch.float64)
        y = torch.as_tensor(values, dtype=torch.float64)
        players, columns = kept.shape[1], values.shape[1]
        self.low = torch.as_tensor(low, dtype=torch.float64)
        self.span = torch.as_tensor(high - low, dtype=torch.float64) + 1e-3
        self.a = torch.zeros(4, columns, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(players, columns, dtype=torch.float64, requires_grad=True)
        self.g = torch.zeros(players, columns, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.a, self.b, self.g], max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            penalty = RIDGE * ((self.b ** 2).sum() + (self.g ** 2).sum()) / players
            total = ((self._values(x) - y) ** 2).mean() + penalty
            total.backward()
            return total

        opt.step(loss)
        self.a, self.b, self.g = self.a.detach(), self.b.detach(), self.g.detach()

    def _logit(self, kept_weights: torch.Tensor, b_sum: torch.Tensor, g_sum: torch.Tensor) -> torch.Tensor:
        u = kept_weights[..., None]
        return self.a[0] + u * (self.a[1] + u * (self.a[2] + u * self.a[3])) + b_sum + u * g_sum

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        t = self._logit(x.mean(1), x @ self.b, x @ self.g)
        return self.low + self.span * torch.sigmoid(t)

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        """float64 [C, columns]: V^ of each row of `kept` (bool [C, players])."""
        with torch.no_grad():
            return self._values(torch.as_tensor(kept, dtype=torch.float64)).numpy()

    def shapley(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """float64 [players, columns] twice: the surrogate's Shapley value from seeded permutations (each followed
        by its reverse; as many as SURROGATE_BUDGET allows, at least SURROGATE_PERMUTATIONS), walked by cumulative
        sums of the per-unit weights, and the standard error of that average."""
        players, columns = self.b.shape
        pairs = surrogate_permutations(players, columns) // 2
        rng = np.random.default_rng([seed, 41])
        total = torch.zeros(players, columns, dtype=torch.float64)
        squares = torch.zeros_like(total)
        batch = max(1, min(pairs, 2 ** 21 // (players * columns)))
        u = torch.arange(players + 1, dtype=torch.float64) / players
        with torch.no_grad():
            for done in range(0, pairs, batch):
                half = torch.as_tensor(np.stack([rng.permutation(players) for _ in range(min(batch, pairs - done))]))
                both = self._walk(torch.cat([half, half.flip(1)]), u)  # [2 * count, players, columns]
                pair = both[:len(half)] + both[len(half):]
                total += pair.sum(0)
                squares += (pair ** 2).sum(0)
        mean = total / pairs
        se = torch.sqrt(torch.clamp(squares / pairs - mean ** 2, min=0) / max(pairs - 1, 1)) / 2
        return (mean / 2).numpy(), se.numpy()

    def _walk(self, orders: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """[len(orders), players, columns]: in each order, each player's V^(prefix with it) - V^(prefix without it)."""
        zero = torch.zeros(len(orders), 1, self.b.shape[1], dtype=torch.float64)
        b_sum = torch.cat([zero, self.b[orders].cumsum(1)], 1)
        g_sum = torch.cat([zero, self.g[orders].cumsum(1)], 1)
        v = self.low + self.span * torch.sigmoid(self._logit(u[None, :].expand(len(orders), -1), b_sum, g_sum))
        out = torch.empty(len(orders), *self.b.shape, dtype=torch.float64)
        out.scatter_(1, orders[..., None].expand(-1, -1, self.b.shape[1]), v[:, 1:] - v[:, :-1])
        return out


def surrogate_permutations(players: int, columns: int) -> int:
    """How many permutations (an even number) Surrogate.shapley walks for this many players and columns."""
    return 2 * (min(SURROGATE_MOST, max(SURROGATE_PERMUTATIONS, SURROGATE_BUDGET // (players * columns))) // 2)


class SizeBins:
    """The residual game's Shapley value by differences of means (kept minus removed) in RESIDUAL_BINS bins of
    coalition size, each bin weighted by the share of sizes it holds; for R weightings of the samples at once
    (R rows of [m] weights). What does not depend on the column is computed here, once."""

    def __init__(self, kept: np.ndarray, weights: np.ndarray):
        players = kept.shape[1]
        size = kept.sum(1)
        edges = np.linspace(0, players + 1, RESIDUAL_BINS + 1).round().astype(int)
        self.shape = (len(weights), players)
        self.bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows = (size >= lo) & (size < hi)
            if rows.sum() < 2:
                continue
            k = kept[rows].astype(np.float64)
            w = weights[:, rows]
            n_in = w @ k  # [R, players]
            n_out = w.sum(1, keepdims=True) - n_in
            share_in = (min(hi, players + 1) - max(lo, 1)) / players  # sizes 1..players in the bin
            share_out = (min(hi, players) - lo) / players  # sizes 0..players-1 in the bin
            with np.errstate(invalid="ignore", divide="ignore"):  # a side with no sample adds nothing
                scale_in = np.where(n_in > 0, share_in / n_in, 0.0)
                scale_out = np.where(n_out > 0, share_out / n_out, 0.0)
            self.bins.append((rows, k, w, scale_in, scale_out))

    def shapley(self, residual: np.ndarray) -> np.ndarray:
        """[R, players]: the value of the residual game given by one column of residuals ([m])."""
        out = np.zeros(self.shape)
        for rows, k, w, scale_in, scale_out in self.bins:
            wr = w * residual[rows]
            total_in = wr @ k
            out = out + scale_in * total_in - scale_out * (wr.sum(1, keepdims=True) - total_in)
        return out


def msr_values(values: np.ndarray, players: int, seed: int, bootstrap: int, ci_delta: float) -> Estimate:
    """The estimate from V of coalitions 0..m-1 (float64 [m, M]: whole metric, then per class), with percentile
    intervals at 1 - ci_delta from `bootstrap` Poisson resamplings of the residual term (surrogates held fixed)."""
    return msr_estimate(~coalitions(seed, 0, len(values), players), values, seed, bootstrap, ci_delta)


def msr_estimate(kept: np.ndarray, values: np.ndarray, seed: int, bootstrap: int, ci_delta: float) -> Estimate:
    """msr_values for given coalitions (bool [m, players], True: kept) drawn as `coalitions` draws them."""
    (m, players), columns = kept.shape, values.shape[1]
    missing = ~np.isfinite(values).all(0)  # a class without images: NaN in every row
    values = np.where(missing, 0.0, values)
    low, high = values.min(0), values.max(0)
    folds = [(np.arange(m) % FOLDS != k, np.arange(m) % FOLDS == k) for k in range(FOLDS)]
    weights = np.random.default_rng([seed, 43]).poisson(1.0, (bootstrap, m)).astype(np.float64)
    value = np.zeros((players, columns))
    ci_low, ci_high = np.full_like(value, np.nan), np.full_like(value, np.nan)
    halves, surrogate_se = [], np.zeros((players, columns))
    for fit, use in folds:
        surrogate = Surrogate(kept[fit], values[fit], low, high)
        base, se = surrogate.shapley(seed)
        halves.append((use, base, values[use] - surrogate(kept[use])))
        surrogate_se += se ** 2 / FOLDS ** 2
    z = NormalDist().inv_cdf(1 - ci_delta / 2) * np.sqrt(surrogate_se)  # the surrogate walks' own sampling error
    plain = [SizeBins(kept[use], np.ones((1, use.sum()))) for use, _, _ in halves]
    resampling = [SizeBins(kept[use], weights[:, use]) for use, _, _ in halves] if bootstrap else []
    for c in range(columns):
        for bins, (_, base, residual) in zip(plain, halves):
            value[:, c] += (base[:, c] + bins.shapley(residual[:, c])[0]) / FOLDS
        if bootstrap and not missing[c]:
            resampled = sum((base[:, c] + bins.shapley(residual[:, c])) / FOLDS
                            for bins, (_, base, residual) in zip(resampling, halves))
            q_low, q_high = np.quantile(resampled, [ci_delta / 2, 1 - ci_delta / 2], axis=0)
            ci_low[:, c] = value[:, c] - np.hypot(np.maximum(value[:, c] - q_low, 0), z[:, c])
            ci_high[:, c] = value[:, c] + np.hypot(np.maximum(q_high - value[:, c], 0), z[:, c])
    value[:, missing] = np.nan
    return Estimate("msr", value, ci_low, ci_high, np.full(players, m, np.int64), m,
                    {"samples": m, "bootstrap": bootstrap, "surrogate_permutations": surrogate_permutations(players, columns),
                     "residual_bins": RESIDUAL_BINS})
