"""The importance stage's outer loops: TMC's rounds of permutation walks (the bandit choosing whom to
sample), MSR's and Banzhaf's rounds of random coalitions, the checkpoint after each round, the summaries, and
the paper's ablation check.

They see the evaluator only through two batch functions, so the same loops run on the Ray actors
(the stage passes Driver.map) and in a test (a plain evaluator over an exactly enumerable game).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.stages.shapley import estimator as est
from pipeline.stages.shapley import banzhaf, msr
from pipeline.stages.shapley.settings import ShapleySettings, estimators

Evaluations = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # bool [C, players] per item -> float [C, M]
Walks = Callable[[Sequence[np.ndarray], np.ndarray], list[tuple[np.ndarray, int]]]  # orders, chosen -> (samples, evals)
TmcState = tuple[est.SampleStats, list, int]  # the stats, the history (evaluations, unsettled, sampled), the rounds done
COALITION_ROUND = 256  # coalitions per MSR or Banzhaf round (a checkpoint after each)
CHUNK = 8  # coalitions per evaluation item (fixed: results must not depend on the workers)


def permutations(players: int, seed: int, round_: int, count: int, antithetic: bool) -> list[np.ndarray]:
    """One round's seeded permutations; with `antithetic`, every second one is the one before it reversed."""
    orders: list[np.ndarray] = []
    for i in range(count):
        if antithetic and i % 2:
            orders.append(orders[-1][::-1].copy())
        else:
            orders.append(np.random.default_rng([seed, round_ + 1, i]).permutation(players))
    return orders


def estimate(walks: Walks, players: int, cfg: ShapleySettings, seed: int, state: TmcState | None = None,
             save: Callable[[TmcState], None] = lambda _state: None, columns: int = 1) -> TmcState:
    """Rounds of `permutations_per_round` seeded permutations until `rounds`, or until the bandit settled the top k.

    `walks(orders, chosen)` walks each permutation (with est.walk) and returns its samples and evaluations,
    in the order of `orders`, so the result never depends on how the walks were spread over workers.
    `state`: a checkpoint saved after an earlier round (resumed from there); `save` is called after each round."""
    stats, history, rounds = state or (est.SampleStats.empty(players, columns), [], 0)
    while rounds < cfg.rounds:
        open_ = est.unsettled(stats, cfg.top_k, cfg.delta, cfg.bound) if cfg.bandit else np.ones(players, bool)
        chosen = est.unsettled(stats, cfg.top_k, cfg.delta, cfg.bound, cfg.focus) if cfg.bandit and cfg.focus else open_
        if not chosen.any():
            break
        orders = permutations(players, seed, rounds, cfg.permutations_per_round, cfg.antithetic)
        for samples, evaluations in walks(orders, chosen):
            stats.add(samples)
            stats.evaluations += evaluations
        rounds += 1
        history.append((stats.evaluations, int(open_.sum()), int(chosen.sum())))
        save((stats, history, rounds))
    return stats, history, rounds


def coalition_rounds(evaluate: Evaluations, draw: Callable[[int, int], np.ndarray], samples: int,
                     values: np.ndarray | None = None, save: Callable[[np.ndarray], None] = lambda _v: None) -> np.ndarray:
    """float64 [samples, M]: V of coalitions 0..samples-1 (`draw(start, stop)` gives their removed units), in rounds
    of COALITION_ROUND (resumed from `values`, those of the first coalitions)."""
    done = [values] if values is not None else []
    start = 0 if values is None else len(values)
    while start < samples:
        stop = min(start + COALITION_ROUND, samples)
        items = [draw(s, min(s + CHUNK, stop)) for s in range(start, stop, CHUNK)]
        done.append(np.concatenate([np.atleast_2d(np.asarray(v).T).T for v in evaluate(items)]))
        start = stop
        save(np.concatenate(done))
    return np.concatenate(done)


def banzhaf_rounds(evaluate: Evaluations, players: int, cfg: ShapleySettings, seed: int,
                   values: np.ndarray | None = None, save: Callable[[np.ndarray], None] = lambda _v: None) -> np.ndarray:
    """float64 [banzhaf_samples, M]: V of every Banzhaf coalition (resumed from `values`)."""
    draw = lambda start, stop: banzhaf.coalitions(seed, start, stop, players, cfg.banzhaf_keep)  # noqa: E731
    return coalition_rounds(evaluate, draw, cfg.banzhaf_samples, values, save)


def msr_rounds(evaluate: Evaluations, players: int, cfg: ShapleySettings, seed: int,
               values: np.ndarray | None = None, save: Callable[[np.ndarray], None] = lambda _v: None) -> np.ndarray:
    """float64 [msr_samples, M]: V of every MSR coalition (resumed from `values`)."""
    draw = lambda start, stop: msr.coalitions(seed, start, stop, players)  # noqa: E731
    return coalition_rounds(evaluate, draw, cfg.msr_samples, values, save)


def ablation_check(evaluate: Evaluations, values: np.ndarray, v_full: float, players: int,
                   seed: int) -> list[tuple[int, str, float, float, np.ndarray]]:
    """The metric after removing the top-N units by value, N random units, and the N largest single-unit effects."""
    singles = np.eye(players, dtype=bool)
    single_values = _whole(evaluate([singles[s:s + CHUNK] for s in range(0, players, CHUNK)]))
    coalitions_ = est.ablation_coalitions(values, v_full - single_values, seed)
    scored = _whole(evaluate([np.stack([c for _, _, c in coalitions_[s:s + CHUNK]])
                              for s in range(0, len(coalitions_), CHUNK)]))
    rows, seen = [], {}
    for (n, method, removed), value in zip(coalitions_, scored):
        seen.setdefault((n, method), []).append((value, removed))
    for (n, method), draws in seen.items():
        value = float(np.mean([v for v, _ in draws]))
        rows.append((n, method, value, v_full - value, draws[0][1]))
    return rows


def _whole(results: list[np.ndarray]) -> np.ndarray:
    """The whole metric (column 0) of a list of evaluation results."""
    return np.concatenate([np.atleast_2d(np.asarray(r).T).T[:, 0] for r in results])


def run_estimator(evaluate: Evaluations, walks: Callable[..., Any], players: int, cfg: ShapleySettings, seed: int,
                  state: dict | None = None, save: Callable[[dict], None] = lambda _state: None,
                  warm: Callable[[np.ndarray], est.SampleStats | None] = lambda _v: None,
                  ) -> tuple[list[est.Estimate], np.ndarray, np.ndarray, list]:
    """The whole estimate: V(no unit removed) and V(all removed), each estimator's rounds and summary, and the
    ablation check (ranked by the first estimator). Returns (estimates, v_full, v_none, ablation rows).

    `walks(orders, chosen, v_full, v_none, settings)` as in `estimate`, given the end values and est.WalkSettings.
    `state` / `save`: the checkpoint, {"tmc": TmcState, "msr": values, "banzhaf": values} as far as each got. `warm(v_full)`: the
    statistics TMC starts from when there is no checkpoint (a warm start), or None."""
    ends = np.atleast_2d(np.asarray(evaluate([np.stack([np.zeros(players, bool), np.ones(players, bool)])])[0]).T).T
    v_full, v_none = ends[0], ends[1]
    state = dict(state or {})
    out = []
    for name in estimators(cfg, players):
        keep = lambda part, name=name: save({**state, name: part})  # noqa: E731
        if name == "tmc":
            settings = est.WalkSettings(cfg.tolerance, cfg.patience)
            begin = state.get("tmc")
            if begin is None:
                stats = warm(v_full)
                begin = (stats, [], 0) if stats is not None else None
            state["tmc"] = estimate(lambda orders, chosen: walks(orders, chosen, v_full, v_none, settings),
                                    players, cfg, seed, begin, keep, columns=len(v_full))
            stats, history, rounds = state["tmc"]
            out.append(est.summarize(stats, rounds, cfg.ci_delta, history))
        elif name == "msr":
            state["msr"] = msr_rounds(evaluate, players, cfg, seed, state.get("msr"), keep)
            out.append(msr.msr_values(state["msr"], players, seed, cfg.bootstrap, cfg.ci_delta))
        else:
            state["banzhaf"] = banzhaf_rounds(evaluate, players, cfg, seed, state.get("banzhaf"), keep)
            out.append(banzhaf.banzhaf_values(state["banzhaf"], players, seed, cfg.banzhaf_keep, cfg.bootstrap,
                                              cfg.ci_delta))
    return out, v_full, v_none, ablation_check(evaluate, out[0].value[:, 0], float(v_full[0]), players, seed)
