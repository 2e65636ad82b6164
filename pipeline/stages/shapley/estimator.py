"""Neuron Shapley (Ghorbani & Zou, NeurIPS 2020): truncated Monte-Carlo permutation sampling with
the paper's multi-armed bandit, as pure functions over an evaluator V(removed units).

One permutation is walked from the full network, removing players in its order; a player's
sample is V(before) - V(after its removal). The walk is truncated once V stays within `tolerance`
of V(every player removed) for `patience` evaluations: the players not reached get 0 (counted as
a sample). The bandit keeps sampling only players whose membership in the top k is unsettled
(empirical Bernstein bounds); a walk then evaluates V only around those players' positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Evaluate = Callable[[np.ndarray], np.ndarray]  # bool [C, players] removed -> float [C] metric


@dataclass(frozen=True)
class WalkSettings:
    tolerance: float = 0.0  # truncate when |V - V(none)| < tolerance (0: never truncate)
    patience: int = 6  # ... for this many evaluations in a row
    chunk: int = 8  # coalitions evaluated per forward (fixed: results must not depend on workers)


def walk(evaluate: Evaluate, order: np.ndarray, chosen: np.ndarray, v_full: float, v_none: float,
         settings: WalkSettings) -> np.ndarray:
    """float64 [players]: the chosen players' marginal contributions in this permutation (NaN for the
    others: not sampled).

    V is needed only just before and just after each chosen player's removal: with every player
    chosen that is the whole walk; with a few, a few evaluations of the permutation's prefixes."""
    players = len(order)
    out = np.full(players, np.nan)
    at = np.flatnonzero(chosen[order])  # positions of the chosen players in the permutation
    if not len(at):
        return out
    needed = np.union1d(at, at + 1)  # prefix lengths k: V with order[:k] removed
    needed = needed[needed > 0]
    value = {0: v_full}
    near = 0
    for start in range(0, len(needed), settings.chunk):
        ks = needed[start:start + settings.chunk]
        masks = np.zeros((len(ks), players), bool)
        for t, k in enumerate(ks):
            masks[t, order[:k]] = True
        for k, v in zip(ks, evaluate(masks)):
            value[int(k)] = float(v)
            near = near + 1 if abs(v - v_none) < settings.tolerance else 0
            if near >= settings.patience:  # truncated: whatever comes after contributes nothing
                for j in at:
                    out[order[j]] = value[j] - value[j + 1] if j + 1 <= k else 0.0
                return out
    for j in at:
        out[order[j]] = value[j] - value[j + 1]
    return out


@dataclass
class SampleStats:
    """Running per-player sums of the marginal samples (order-independent, so exact across workers)."""

    count: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    evaluations: int = 0
    permutations: int = 0

    @classmethod
    def empty(cls, players: int) -> SampleStats:
        z = np.zeros(players)
        return cls(z.astype(np.int64), z.copy(), z.copy(), np.full(players, np.inf), np.full(players, -np.inf))

    def add(self, samples: np.ndarray) -> None:
        """One walk's marginals (NaN: not sampled)."""
        seen = ~np.isnan(samples)
        x = np.where(seen, samples, 0.0)
        self.count += seen
        self.total += x
        self.squares += x * x
        self.low = np.where(seen, np.minimum(self.low, x), self.low)
        self.high = np.where(seen, np.maximum(self.high, x), self.high)
        self.permutations += 1

    @property
    def mean(self) -> np.ndarray:
        return np.divide(self.total, self.count, out=np.zeros(len(self.total)), where=self.count > 0)

    def bound(self, delta: float) -> np.ndarray:
        """Empirical Bernstein half-width (Maurer & Pontil; as the paper): inf below 2 samples."""
        n = self.count.astype(float)
        var = np.divide(self.squares - n * self.mean ** 2, n - 1, out=np.zeros(len(n)), where=n > 1)
        spread = np.where(n > 0, self.high - self.low, 0.0)
        log = np.log(2 / delta)
        with np.errstate(divide="ignore", invalid="ignore"):
            cb = np.sqrt(2 * np.maximum(var, 0) * log / n) + 7 / 3 * spread * log / (n - 1)
        return np.where(n > 1, cb, np.inf)


def unsettled(stats: SampleStats, top_k: int, delta: float) -> np.ndarray:
    """bool [players]: players whose place in or out of the top k is not yet settled (the paper's
    rule: v - CB < thresh < v + CB, thresh the (k+1)-th largest mean)."""
    players = len(stats.count)
    cb = stats.bound(delta)
    if top_k >= players:
        return ~np.isfinite(cb)
    mean = stats.mean
    thresh = np.sort(mean)[::-1][top_k]
    return (mean - cb < thresh) & (thresh < mean + cb)


@dataclass(frozen=True)
class ShapleyResult:
    value: np.ndarray  # float64 [players]
    ci_low: np.ndarray
    ci_high: np.ndarray
    samples: np.ndarray  # int64
    v_full: float
    v_none: float
    evaluations: int
    permutations: int
    rounds: int
    history: list = field(default_factory=list)  # per round: (evaluations so far, unsettled players)


def summarize(stats: SampleStats, v_full: float, v_none: float, rounds: int, ci_delta: float,
              history: list) -> ShapleyResult:
    """Values with their confidence interval (empirical Bernstein at 1 - ci_delta)."""
    cb = stats.bound(ci_delta)
    mean = stats.mean
    return ShapleyResult(mean, mean - cb, mean + cb, stats.count.copy(), v_full, v_none, stats.evaluations,
                         stats.permutations, rounds, history)


@dataclass(frozen=True)
class ShapleyOutput:
    """What the stage hands the catalog writer."""

    result: ShapleyResult
    ablation: list  # (N, method, value, drop, removed bool [players] of the first draw)
    eval_images: int


ABLATION_COUNTS = (1, 2, 5, 10, 20)


def ablation_coalitions(values: np.ndarray, single_effect: np.ndarray, seed: int,
                        draws: int = 5) -> list[tuple[int, str, np.ndarray]]:
    """(N, method, removed bool [players]) for the paper's check: the top-N Shapley units, N random
    units (`draws` seeded draws, averaged by the caller), the N largest single-unit ablation effects."""
    players = len(values)
    rng = np.random.default_rng([seed, 7])
    out = []
    for n in (n for n in ABLATION_COUNTS if n <= players):
        for method, pick in (("shapley", np.argsort(-values, kind="stable")[:n]),
                             ("single_ablation", np.argsort(-single_effect, kind="stable")[:n])):
            out.append((n, method, np.isin(np.arange(players), pick)))
        for _ in range(draws):
            out.append((n, "random", np.isin(np.arange(players), rng.choice(players, n, replace=False))))
    return out
