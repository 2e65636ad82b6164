"""Neuron Shapley's outer loop: rounds of permutation walks, the bandit choosing whom to sample, the
checkpoint after each round, the summary, and the paper's ablation check.

It sees the evaluator only through two batch functions, so the same loop runs on the Ray actors
(the stage passes Driver.map) and in a test (a plain evaluator over an exactly enumerable game).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.stages.shapley import estimator as est
from pipeline.stages.shapley.settings import ShapleySettings

Evaluations = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # bool [C, players] per item -> float [C] metric
Walks = Callable[[Sequence[np.ndarray], np.ndarray], list[tuple[np.ndarray, int]]]  # orders, chosen -> (samples, evals)
State = tuple[est.SampleStats, list, int]  # the stats, the history, the rounds done


def estimate(walks: Walks, players: int, cfg: ShapleySettings, seed: int, state: State | None = None,
             save: Callable[[State], None] = lambda _state: None) -> State:
    """Rounds of `permutations_per_round` seeded permutations until `rounds`, or until the bandit settled the top k.

    `walks(orders, chosen)` walks each permutation (with est.walk) and returns its samples and evaluations,
    in the order of `orders`, so the result never depends on how the walks were spread over workers.
    `state`: a checkpoint saved after an earlier round (resumed from there); `save` is called after each round."""
    stats, history, rounds = state or (est.SampleStats.empty(players), [], 0)
    while rounds < cfg.rounds:
        chosen = est.unsettled(stats, cfg.top_k, cfg.delta) if cfg.bandit else np.ones(players, bool)
        if not chosen.any():
            break
        orders = [np.random.default_rng([seed, rounds + 1, i]).permutation(players)
                  for i in range(cfg.permutations_per_round)]
        for samples, evaluations in walks(orders, chosen):
            stats.add(samples)
            stats.evaluations += evaluations
        rounds += 1
        history.append((stats.evaluations, int(chosen.sum())))
        save((stats, history, rounds))
    return stats, history, rounds


def ablation_check(evaluate: Evaluations, result: est.ShapleyResult, players: int,
                   seed: int) -> list[tuple[int, str, float, float, np.ndarray]]:
    """The metric after removing the top-N Shapley units, N random units, and the N largest single-unit effects."""
    v_full = result.v_full
    singles = np.eye(players, dtype=bool)
    single_values = np.concatenate(evaluate([singles[s:s + 8] for s in range(0, players, 8)]))
    coalitions = est.ablation_coalitions(result.value, v_full - single_values, seed)
    values = np.concatenate(evaluate([np.stack([c for _, _, c in coalitions[s:s + 8]])
                                      for s in range(0, len(coalitions), 8)]))
    rows, seen = [], {}
    for (n, method, removed), value in zip(coalitions, values):
        seen.setdefault((n, method), []).append((value, removed))
    for (n, method), draws in seen.items():
        value = float(np.mean([v for v, _ in draws]))
        rows.append((n, method, value, v_full - value, draws[0][1]))
    return rows


def run_estimator(evaluate: Evaluations, walks: Callable[..., Any], players: int, cfg: ShapleySettings, seed: int,
                  state: State | None = None, save: Callable[[State], None] = lambda _state: None,
                  ) -> tuple[est.ShapleyResult, list]:
    """The whole estimate: V(no unit removed) and V(all removed), the rounds, the summary, the ablation check.

    `walks(orders, chosen, v_full, v_none, settings)` as in `estimate`, given the end values and est.WalkSettings."""
    ends, = evaluate([np.stack([np.zeros(players, bool), np.ones(players, bool)])])
    v_full, v_none = float(ends[0]), float(ends[1])
    settings = est.WalkSettings(cfg.tolerance, cfg.patience)
    stats, history, rounds = estimate(lambda orders, chosen: walks(orders, chosen, v_full, v_none, settings),
                                      players, cfg, seed, state, save)
    result = est.summarize(stats, v_full, v_none, rounds, cfg.ci_delta, history)
    return result, ablation_check(evaluate, result, players, seed)
