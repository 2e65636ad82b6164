"""Neuron Shapley (Ghorbani & Zou, NeurIPS 2020): truncated Monte-Carlo permutation sampling with
the paper's multi-armed bandit, as pure functions over an evaluator V(removed units).

One permutation is walked from the full network, removing players in its order; a player's
sample is V(before) - V(after its removal). The walk is truncated once V stays within `tolerance`
of V(every player removed) for `patience` evaluations: the players not reached get 0 (counted as
a sample). The bandit keeps sampling only players whose membership in the top k is unsettled
(empirical Bernstein bounds), or only the most ambiguous of them (`focus`); a walk then evaluates V only
around those players' positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

Evaluate = Callable[[np.ndarray], np.ndarray]  # bool [C, players] removed -> float [C, M] metric (whole, per class)


@dataclass(frozen=True)
class WalkSettings:
    tolerance: float = 0.0  # truncate when |V - V(none)| < tolerance (0: never truncate)
    patience: int = 6  # ... for this many evaluations in a row
    chunk: int = 8  # coalitions evaluated per forward (fixed: results must not depend on workers)


def walk(evaluate: Evaluate, order: np.ndarray, chosen: np.ndarray, v_full: np.ndarray | float,
         v_none: np.ndarray | float, settings: WalkSettings) -> np.ndarray:
    """float64 [players, M]: the chosen players' marginal contributions in this permutation, for each of the M
    columns `evaluate` returns (the whole metric, then per class); NaN rows for the others (not sampled).

    V is needed only just before and just after each chosen player's removal: with every player
    chosen that is the whole walk; with a few, a few evaluations of the permutation's prefixes, and the
    walk stops at the last chosen player. Truncation looks at column 0 (the whole metric)."""
    players = len(order)
    at = np.flatnonzero(chosen[order])  # positions of the chosen players in the permutation
    needed = np.union1d(at, at + 1)  # prefix lengths k: V with order[:k] removed
    needed = needed[needed > 0]
    value = {0: np.atleast_1d(np.asarray(v_full, float))}
    v_none = float(np.atleast_1d(v_none)[0])
    near = 0
    for start in range(0, len(needed), settings.chunk):
        ks = needed[start:start + settings.chunk]
        masks = np.zeros((len(ks), players), bool)
        for t, k in enumerate(ks):
            masks[t, order[:k]] = True
        rows = np.atleast_2d(evaluate(masks).T).T  # a 1-D evaluator (tests) gives one column
        for k, v in zip(ks, rows):
            value[int(k)] = v
            near = near + 1 if abs(v[0] - v_none) < settings.tolerance else 0
            if near >= settings.patience:  # truncated: whatever comes after contributes nothing
                return _marginals(order, at, value, int(k))
    return _marginals(order, at, value, players)


def _marginals(order: np.ndarray, at: np.ndarray, value: dict[int, np.ndarray], reached: int) -> np.ndarray:
    """Each chosen player's V(before) - V(after) (0 beyond `reached`, where the walk was truncated)."""
    out = np.full((len(order), len(value[0])), np.nan)
    for j in at:
        out[order[j]] = value[j] - value[j + 1] if j + 1 <= reached else 0.0
    return out


@dataclass
class SampleStats:
    """Running per-player sums of the marginal samples, per column (the whole metric, then each class);
    order-independent, so exact across workers. `weight` counts a sample once (a warm start carries
    earlier samples at less)."""

    count: np.ndarray  # float64 [players]: the (weighted) number of samples
    total: np.ndarray  # float64 [players, M]
    squares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    evaluations: int = 0
    permutations: int = 0

    @classmethod
    def empty(cls, players: int, columns: int = 1) -> SampleStats:
        z = np.zeros((players, columns))
        return cls(np.zeros(players), z, z.copy(), np.full_like(z, np.inf), np.full_like(z, -np.inf))

    def add(self, samples: np.ndarray) -> None:
        """One walk's marginals [players, M] (NaN rows: not sampled)."""
        samples = samples.reshape(len(self.count), -1)
        seen = ~np.isnan(samples[:, 0])
        x = np.where(seen[:, None], samples, 0.0)
        self.count += seen
        self.total += x
        self.squares += x * x
        self.low = np.where(seen[:, None], np.minimum(self.low, x), self.low)
        self.high = np.where(seen[:, None], np.maximum(self.high, x), self.high)
        self.permutations += 1

    @property
    def mean(self) -> np.ndarray:
        """float64 [players, M] (0 where a player has no sample)."""
        n = self.count[:, None]
        return np.divide(self.total, n, out=np.zeros_like(self.total), where=n > 0)

    def bound(self, delta: float, kind: str = "bernstein") -> np.ndarray:
        """[players, M] half-width at confidence 1 - delta: empirical Bernstein (Maurer & Pontil; as the paper), or
        the normal approximation (z * standard error, tighter once there are a few samples); inf below 2 samples."""
        n = np.broadcast_to(self.count[:, None], self.total.shape)
        mean = self.mean
        var = np.maximum(np.divide(self.squares - n * mean ** 2, n - 1, out=np.zeros_like(mean), where=n > 1), 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "normal":
                cb = NormalDist().inv_cdf(1 - delta / 2) * np.sqrt(var / n)
            else:
                spread = np.where(n > 0, self.high - self.low, 0.0)
                log = np.log(2 / delta)
                cb = np.sqrt(2 * var * log / n) + 7 / 3 * spread * log / (n - 1)
        return np.where(n > 1, cb, np.inf)


def unsettled(stats: SampleStats, top_k: int, delta: float, kind: str = "bernstein", focus: int = 0) -> np.ndarray:
    """bool [players]: players whose place in or out of the top k (of the whole metric) is not yet settled
    (the paper's rule: v - CB < thresh < v + CB, thresh the (k+1)-th largest mean).

    `focus` > 0 keeps, of the unsettled players with a bound, only the `focus` most ambiguous (the smallest
    |v - thresh| / CB): a walk then costs about 2 * focus evaluations, and the samples go where the top k is
    decided. Players without a bound yet (under 2 samples) are always kept."""
    players = len(stats.count)
    cb = stats.bound(delta, kind)[:, 0]
    if top_k >= players:
        return ~np.isfinite(cb)
    mean = stats.mean[:, 0]
    thresh = np.sort(mean)[::-1][top_k]
    open_ = (mean - cb < thresh) & (thresh < mean + cb)
    bounded = open_ & np.isfinite(cb)
    if focus and bounded.sum() > focus:
        ambiguity = np.where(bounded, np.abs(mean - thresh) / np.where(bounded, cb, 1.0), np.inf)
        kept = np.argsort(ambiguity, kind="stable")[:focus]
        open_ = open_ & ~bounded
        open_[kept] = True
    return open_


@dataclass(frozen=True)
class Estimate:
    """One estimator's values per player: column 0 for the whole metric, then one column per class."""

    estimator: str  # 'tmc' (Shapley) | 'banzhaf'
    value: np.ndarray  # float64 [players, M]
    ci_low: np.ndarray
    ci_high: np.ndarray
    samples: np.ndarray  # int64 [players]: marginals sampled (TMC) or coalitions evaluated (Banzhaf)
    evaluations: int
    details: dict = field(default_factory=dict)  # for the manifest
    std: np.ndarray | None = None  # TMC: [players, M] the samples' standard deviation, and their range
    spread: np.ndarray | None = None


def summarize(stats: SampleStats, rounds: int, ci_delta: float, history: list, **details) -> Estimate:
    """TMC values with their confidence interval (empirical Bernstein at 1 - ci_delta)."""
    cb = stats.bound(ci_delta)
    mean = stats.mean
    n = stats.count[:, None]
    std = np.sqrt(np.maximum(np.divide(stats.squares - n * mean ** 2, n - 1, out=np.full_like(mean, np.nan), where=n > 1), 0))
    return Estimate("tmc", mean, mean - cb, mean + cb, np.rint(stats.count).astype(np.int64), stats.evaluations,
                    {"rounds": rounds, "permutations": stats.permutations, "evaluations": stats.evaluations,
                     "unsettled_per_round": [int(h[1]) for h in history],
                     "sampled_per_round": [int(h[-1]) for h in history], **details},
                    std, np.where(n > 0, stats.high - stats.low, np.nan))


@dataclass(frozen=True)
class ShapleyOutput:
    """What the stage hands the catalog writer."""

    estimates: list[Estimate]
    v_full: np.ndarray  # float64 [M]: V with no unit removed, whole metric then per class
    v_none: np.ndarray
    ablation: list  # (N, method, value, drop, removed bool [players] of the first draw)
    eval_images: int
    warm_start: dict | None = None


ABLATION_COUNTS = (1, 2, 5, 10, 20)


def ablation_coalitions(values: np.ndarray, single_effect: np.ndarray, seed: int,
                        draws: int = 5) -> list[tuple[int, str, np.ndarray]]:
    """(N, method, removed bool [players]) for the paper's check: the top-N Shapley units, N random
    units (`draws` seeded draws, averaged by the caller), the N largest single-unit ablation effects."""
    players = len(values)
    rng = np.random.default_rng([seed, 7])
    out = []
    for n in (n for n in ABLATION_COUNTS if n <= players):
        for method, pick in (("values", np.argsort(-values, kind="stable")[:n]),
                             ("single_ablation", np.argsort(-single_effect, kind="stable")[:n])):
            out.append((n, method, np.isin(np.arange(players), pick)))
        for _ in range(draws):
            out.append((n, "random", np.isin(np.arange(players), rng.choice(players, n, replace=False))))
    return out
