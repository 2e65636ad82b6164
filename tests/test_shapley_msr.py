"""The MSR Shapley estimator (random coalitions, a fitted surrogate game, a size-binned residual correction):
exact enumeration on a small CNN (whole metric and every class) and on games the surrogate cannot represent."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.stages.shapley import msr
from pipeline.stages.shapley.rounds import msr_rounds
from pipeline.stages.shapley.settings import ShapleySettings, estimators
from test_shapley_stage import _ablation_rows, _ablator_without_class_2, _cnn_game, _exact, _run


def SHAPLEY_WEIGHT(size: int, n: int) -> float:
    return math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)


def test_msr_matches_exact_enumeration_for_the_whole_metric_and_every_class():
    _, _, _, ablator, values = _cnn_game()
    exact = _exact(values, SHAPLEY_WEIGHT)
    before = ablator.evaluations
    (e,), v_full, v_none = _run(ablator, estimator="msr", msr_samples=2048)
    assert e.estimator == "msr" and e.value.shape == (6, 4) and (e.samples == 2048).all()
    assert ablator.evaluations - before == 2 + 2048 + 6 + _ablation_rows(6)  # ends, samples, check
    np.testing.assert_allclose(e.value, exact, atol=0.05 * np.abs(exact).max())
    assert ((e.ci_low <= exact) & (exact <= e.ci_high)).mean() >= 0.8  # 95% intervals, 24 of them
    assert np.corrcoef(e.value[:, 0], exact[:, 0])[0, 1] > 0.99
    np.testing.assert_allclose(e.value.sum(0), v_full - v_none, atol=0.05 * np.abs(v_full - v_none).max())


def _game_values(game, players: int) -> dict[tuple, np.ndarray]:
    return {kept: np.full(4, float(game(np.array(kept)))) for kept in itertools.product([False, True], repeat=players)}


GAMES = {  # kept units (bool [5]) -> V: interactions a sigmoid of a weighted sum cannot fit
    "xor": lambda k: float(k[0] != k[1]) + 0.2 * k[2],
    "majority": lambda k: float(k[:3].sum() >= 2) - 0.5 * float(k[3] and k[4]),
    "size only": lambda k: float(k.sum() % 2),
}


@pytest.mark.parametrize("name", GAMES)
def test_msr_is_exact_in_the_limit_on_games_the_surrogate_cannot_represent(name):
    players = 5
    values = _game_values(GAMES[name], players)
    exact = _exact(values, SHAPLEY_WEIGHT)[:, 0]
    m = 8192
    kept = ~msr.coalitions(3, 0, m, players)
    v = np.array([values[tuple(row)][0] for row in kept])[:, None]
    e = msr.msr_estimate(kept, v, seed=3, bootstrap=100, ci_delta=0.05)
    np.testing.assert_allclose(e.value[:, 0], exact, atol=0.04)
    assert ((e.ci_low[:, 0] - 0.01 <= exact) & (exact <= e.ci_high[:, 0] + 0.01)).all()


def test_keep_probabilities_are_stratified_and_the_draws_reproducible():
    p = np.array([msr.keep_probability(7, i) for i in range(2 * msr.STRATA)])
    for block in p.reshape(2, msr.STRATA):  # one value in each stratum of each block
        np.testing.assert_array_equal(np.sort(np.floor(block * msr.STRATA)), np.arange(msr.STRATA))
    np.testing.assert_array_equal(msr.coalitions(7, 100, 140, 9), msr.coalitions(7, 0, 140, 9)[100:])
    sizes = (~msr.coalitions(7, 0, 4096, 20)).sum(1)
    assert abs(np.bincount(sizes, minlength=21) / 4096 - 1 / 21).max() < 0.02  # every size about equally often


def test_msr_rounds_resume_from_a_checkpoint_to_the_values_of_an_uninterrupted_run():
    _, _, _, ablator, _ = _cnn_game()
    cfg = ShapleySettings(metric="cross_entropy", msr_samples=600)
    evaluate = lambda items: [ablator.evaluate(r) for r in items]  # noqa: E731
    saved = []
    whole = msr_rounds(evaluate, 6, cfg, seed=2, save=saved.append)
    assert [len(s) for s in saved] == [256, 512, 600]
    np.testing.assert_array_equal(msr_rounds(evaluate, 6, cfg, seed=2, values=saved[0]), whole)
    a = msr.msr_values(whole, 6, 2, 50, 0.05)
    b = msr.msr_values(whole.copy(), 6, 2, 50, 0.05)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.ci_low, b.ci_low)


def test_a_class_without_evaluation_images_has_no_msr_value():
    ablator = _ablator_without_class_2()
    (e,), v_full, _ = _run(ablator, estimator="msr", msr_samples=256)
    assert np.isnan(v_full[3]) and np.isnan(e.value[:, 3]).all() and np.isnan(e.ci_low[:, 3]).all()
    assert np.isfinite(e.value[:, :3]).all() and np.isfinite(e.ci_high[:, :3]).all()


def test_auto_picks_msr_above_the_tmc_limit():
    from pipeline.stages.shapley.settings import AUTO_TMC_PLAYERS
    assert estimators(ShapleySettings(), AUTO_TMC_PLAYERS) == ("tmc",)
    assert estimators(ShapleySettings(), AUTO_TMC_PLAYERS + 1) == ("msr",)


def test_too_few_msr_samples_is_a_job_error_naming_the_key():
    from pipeline.errors import UserError
    with pytest.raises(UserError, match=r"'stages.shapley.msr_samples' must be at least 16 .* got 8"):
        ShapleySettings(msr_samples=8).check("stages.shapley")
    ShapleySettings(msr_samples=16).check("stages.shapley")
    values = np.random.default_rng(0).random((16, 2))  # so few that most size bins hold under 2 samples
    e = msr.msr_values(values, 40, 0, 10, 0.05)
    assert np.isfinite(e.value).all() and np.isfinite(e.ci_low).all()
    alone = msr.SizeBins(np.ones((1, 40), bool), np.ones((3, 1)))  # no size bin with 2 samples: no correction
    np.testing.assert_array_equal(alone.shapley(np.ones(1)), np.zeros((3, 40)))
