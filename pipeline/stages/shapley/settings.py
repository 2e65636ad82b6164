"""[stages.shapley]: the metric, the players, the estimators and the bandit of the importance stage."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one

ESTIMATORS = ("auto", "tmc", "msr", "banzhaf", "both")
LEAST_SAMPLES = 16  # the fewest coalitions the MSR estimator takes: fewer leave its surrogate fits next to no data
AUTO_TMC_PLAYERS = 256  # "auto": Shapley by truncated Monte-Carlo up to this many players, by MSR above


@dataclass(frozen=True)
class ShapleySettings:
    metric: str = "accuracy"  # or "cross_entropy" (V = minus the mean cross-entropy)
    eval_images: int = 256  # a seeded subset of the labelled images
    target_class: int = -1  # -1: the whole metric; N: the metric on class N's images
    layers: tuple[str, ...] = ()  # player layers (paths or globs among model.layers); empty: all of them
    estimator: str = "auto"  # "tmc" | "msr" (both Shapley) | "banzhaf" | "both" (tmc and banzhaf) | "auto" (AUTO_TMC_PLAYERS)
    top_k: int = 10  # the bandit settles membership in the top k
    rounds: int = 30  # at most this many rounds of permutations
    permutations_per_round: int = 8
    bandit: bool = True  # false: plain truncated Monte-Carlo (every player sampled in every walk)
    antithetic: bool = True  # each round's second half walks the first half's permutations reversed
    tolerance: float = 0.01  # truncate a walk once V stays within this of V(all units removed)...
    patience: int = 6  # ... for this many evaluations in a row (tolerance 0: never truncate)
    delta: float = 0.2  # the bandit's confidence parameter (the paper's)
    focus: int = 8  # the bandit samples at most this many of the unsettled players a round (the most ambiguous); 0: all
    bound: str = "bernstein"  # the bandit's bounds: "bernstein" (the paper's) | "normal" (z * standard error)
    ci_delta: float = 0.05  # reported intervals hold with probability 1 - ci_delta
    msr_samples: int = 2048  # random coalitions evaluated by the MSR Shapley estimator
    banzhaf_samples: int = 1024  # random coalitions evaluated by the Banzhaf estimator
    banzhaf_keep: float = 0.5  # the probability a unit stays in a Banzhaf coalition (0.5: the Banzhaf value)
    bootstrap: int = 200  # Poisson bootstrap resamplings for the MSR and Banzhaf intervals

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if self.metric not in ("accuracy", "cross_entropy"):
            raise UserError(f"job key '{key}.metric' must be \"accuracy\" or \"cross_entropy\", got {self.metric!r}.")
        if self.bound not in ("bernstein", "normal"):
            raise UserError(f"job key '{key}.bound' must be \"bernstein\" or \"normal\", got {self.bound!r}.")
        if self.estimator not in ESTIMATORS:
            raise UserError(f"job key '{key}.estimator' must be one of {', '.join(map(repr, ESTIMATORS))}, "
                            f"got {self.estimator!r}.")
        for name in ("delta", "ci_delta", "banzhaf_keep"):
            if not 0 < getattr(self, name) < 1:
                raise UserError(f"job key '{key}.{name}' must be between 0 and 1, got {getattr(self, name)}.")
        if self.tolerance < 0:
            raise UserError(f"job key '{key}.tolerance' must be 0 or more, got {self.tolerance}.")
        if self.msr_samples < LEAST_SAMPLES:
            raise UserError(f"job key '{key}.msr_samples' must be at least {LEAST_SAMPLES} (the MSR estimator fits its "
                            f"surrogate on half of them), got {self.msr_samples}.")
        if self.focus < 0:
            raise UserError(f"job key '{key}.focus' must be 0 (every unsettled unit) or more, got {self.focus}.")
        if self.bootstrap < 0:
            raise UserError(f"job key '{key}.bootstrap' must be 0 or more, got {self.bootstrap}.")
        at_least_one({f"{key}.{name}": getattr(self, name)
                      for name in ("eval_images", "top_k", "rounds", "permutations_per_round", "patience", "msr_samples",
                                   "banzhaf_samples")})


def estimators(s: ShapleySettings, players: int) -> tuple[str, ...]:
    """The estimators a run uses: "auto" is TMC up to AUTO_TMC_PLAYERS players, MSR above."""
    if s.estimator == "auto":
        return ("tmc",) if players <= AUTO_TMC_PLAYERS else ("msr",)
    return ("tmc", "banzhaf") if s.estimator == "both" else (s.estimator,)
