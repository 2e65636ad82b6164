"""Neuron Shapley in-process: closed-form values of a planted model, exact enumeration, the model split."""

from __future__ import annotations

import copy
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipeline.errors import UserError
from pipeline.stages.shapley import estimator as sh
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, split_model, whole_model
from pipeline.stages.shapley.rounds import estimate, run_estimator
from pipeline.stages.shapley.settings import ShapleySettings

sys.path.insert(0, str(Path(__file__).parent / "assets"))
from tiny_models import ShapleyPlanted  # noqa: E402

COLORS = {"gray": (0.0, 0.0, 0.0), "red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
LABELS = {"gray": 0, "red": 1, "blue": 1, "green": 2}
COUNTS = {"gray": 8, "red": 6, "blue": 2, "green": 8}  # 24 images, already normalized to [-1, 1]


def _planted_data():
    colors = [c for c, n in COUNTS.items() for _ in range(n)]
    x = torch.stack([torch.tensor(COLORS[c])[:, None, None].expand(3, 8, 8) for c in colors])
    y = torch.tensor([LABELS[c] for c in colors])
    return colors, x, y


def _ablator(model, layer, units, x, y, metric="accuracy", batch=5, mean_maps=None):
    split = split_model(model, [layer])
    if mean_maps is None:
        outs = []
        handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: outs.append(o.detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        mean_maps = [torch.cat(outs).mean(0).numpy()]
    pairs = [(x[s:s + batch], y[s:s + batch]) for s in range(0, len(x), batch)]
    return Ablator(split, [(layer, units)], mean_maps, cache_eval_set(split, pairs), metric)


def _estimate(ablator, permutations, seed=0, settings=sh.WalkSettings(), bandit_k=None, estimator="tmc"):
    """The stage's own loop (rounds.run_estimator), one permutation per round, on an in-process evaluator:
    the first estimate with its whole-metric column only, V(all) and V(none)."""
    cfg = ShapleySettings(rounds=permutations, permutations_per_round=1, bandit=bandit_k is not None, antithetic=False,
                          top_k=bandit_k or 1, tolerance=settings.tolerance, patience=settings.patience, estimator=estimator)
    estimates, v_full, v_none, _ = run_estimator(lambda items: [ablator.evaluate(r) for r in items], _walks(ablator),
                                                 ablator.players, cfg, seed)
    e = estimates[0]
    whole = sh.Estimate(e.estimator, e.value[:, 0], e.ci_low[:, 0], e.ci_high[:, 0], e.samples, e.evaluations, e.details)
    return whole, float(v_full[0]), float(v_none[0])


def _walks(ablator):
    def walks(orders, chosen, v_full, v_none, settings):
        out = []
        for order in orders:
            before = ablator.evaluations
            out.append((sh.walk(ablator.evaluate, order, chosen, v_full, v_none, settings), ablator.evaluations - before))
        return out
    return walks


def test_planted_additive_model_gets_its_closed_form_values():
    _, x, y = _planted_data()
    ablator = _ablator(ShapleyPlanted(), "relu", 4, x, y)
    res, v_full, v_none = _estimate(ablator, 12)
    n = sum(COUNTS.values())
    assert v_full == 1.0 and v_none == pytest.approx(COUNTS["gray"] / n)
    expected = [COUNTS["red"] / n, COUNTS["green"] / n, 0.0, COUNTS["blue"] / n]
    np.testing.assert_allclose(res.value, expected, atol=1e-12)
    assert res.value[2] == 0.0  # the dead unit: its mean is its output, removing it changes nothing
    np.testing.assert_allclose(res.ci_high - res.ci_low, 0, atol=1e-12)  # every sample was the same
    assert res.value.sum() == pytest.approx(v_full - v_none)  # efficiency


def test_class_specific_values_matter_for_their_class_only():
    _, x, y = _planted_data()
    keep = y == 1  # class 1: the red and the blue images
    means = [m.numpy() for m in _ablator(ShapleyPlanted(), "relu", 4, x, y).means]  # over every image, as in a run
    res, _, _ = _estimate(_ablator(ShapleyPlanted(), "relu", 4, x[keep], y[keep], mean_maps=means), 12)
    np.testing.assert_allclose(res.value, [6 / 8, 0.0, 0.0, 2 / 8], atol=1e-12)  # green matters for class 2 only


def _small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 5, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def _coalition_values(model, layer, x, y, mean_map) -> dict[tuple, np.ndarray]:
    """Every coalition K (the units kept) -> [whole, class 0, 1, 2]: minus the mean cross-entropy on all images and
    on each class's images, with the units outside K replaced by their mean map by a plain hook."""
    module = dict(model.named_modules())[layer]
    players = mean_map.shape[0]
    values = {}
    for kept in itertools.product([False, True], repeat=players):
        keep = torch.tensor(kept)

        def hook(_m, _i, out):
            return torch.where(keep[None, :, None, None], out, torch.as_tensor(mean_map)[None])
        handle = module.register_forward_hook(hook)
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x), y, reduction="none")
        handle.remove()
        values[kept] = np.array([-loss.mean().item()] + [-loss[y == c].mean().item() for c in range(3)])
    return values


def _exact(values: dict[tuple, np.ndarray], weight) -> np.ndarray:
    """[players, 4]: sum over coalitions S without i of weight(|S|) * (V(S + i) - V(S))."""
    players = len(next(iter(values)))
    phi = np.zeros((players, 4))
    for i in range(players):
        for kept, v in values.items():
            if not kept[i]:
                with_i = tuple(True if j == i else k for j, k in enumerate(kept))
                phi[i] += weight(sum(kept), players) * (values[with_i] - v)
    return phi


def _exact_shapley(model, layer, x, y, mean_map) -> np.ndarray:
    return _exact(_coalition_values(model, layer, x, y, mean_map),
                  lambda size, n: math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n))[:, 0]


def test_estimates_match_exact_enumeration_within_their_intervals():
    model = _small_cnn().eval()
    torch.manual_seed(4)
    x, y = torch.randn(30, 3, 8, 8), torch.randint(0, 3, (30,))
    ablator = _ablator(model, "0", 6, x, y, metric="cross_entropy", batch=7)
    exact = _exact_shapley(model, "0", x, y, ablator.means[0].numpy())
    res, v_full, v_none = _estimate(ablator, 300, settings=sh.WalkSettings(tolerance=0.0))
    assert ((res.ci_low <= exact) & (exact <= res.ci_high)).all()
    np.testing.assert_allclose(res.value, exact, atol=0.02 * np.abs(exact).max())
    assert res.value.sum() == pytest.approx(v_full - v_none, abs=1e-9)  # efficiency: every walk telescopes
    assert exact.sum() == pytest.approx(v_full - v_none, abs=1e-5)


def _cnn_game(batch=7):
    model = _small_cnn().eval()
    torch.manual_seed(4)
    x, y = torch.randn(30, 3, 8, 8), torch.randint(0, 3, (30,))
    ablator = _ablator(model, "0", 6, x, y, metric="cross_entropy", batch=batch)
    return model, x, y, ablator, _coalition_values(model, "0", x, y, ablator.means[0].numpy())


def _run(ablator, **settings):
    cfg = ShapleySettings(metric="cross_entropy", tolerance=0.0, bandit=False, **settings)
    estimates, v_full, v_none, _ = run_estimator(lambda items: [ablator.evaluate(r) for r in items], _walks(ablator),
                                                 ablator.players, cfg, seed=1)
    return estimates, v_full, v_none


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_banzhaf_matches_exact_enumeration_for_the_whole_metric_and_every_class(keep):
    _, _, y, ablator, values = _cnn_game()
    exact = _exact(values, lambda size, n: keep ** size * (1 - keep) ** (n - 1 - size))
    before = ablator.evaluations
    (e,), _, _ = _run(ablator, estimator="banzhaf", banzhaf_samples=3000, banzhaf_keep=keep)
    assert e.estimator == "banzhaf" and e.value.shape == (6, 4) and (e.samples == 3000).all()
    assert ablator.evaluations - before == 2 + 3000 + 6 + _ablation_rows(6)  # ends, samples, check: none per class
    np.testing.assert_allclose(e.value, exact, atol=0.06 * np.abs(exact).max())
    inside = (e.ci_low <= exact) & (exact <= e.ci_high)
    assert inside.mean() >= 0.85  # 95% intervals, 24 of them
    assert np.corrcoef(e.value[:, 0], exact[:, 0])[0, 1] > 0.95


def _ablation_rows(players: int) -> int:
    """Coalitions the ablation check evaluates: top-N and single-effect top-N once, random N five times."""
    return sum(7 for n in sh.ABLATION_COUNTS if n <= players)


def test_per_class_shapley_matches_exact_enumeration_and_adds_up_to_the_whole_metric():
    _, _, y, ablator, values = _cnn_game()
    exact = _exact(values, lambda size, n: math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n))
    (e,), v_full, v_none = _run(ablator, estimator="tmc", rounds=40, permutations_per_round=8)
    assert e.value.shape == (6, 4) and ((e.ci_low <= exact) & (exact <= e.ci_high)).all()
    np.testing.assert_allclose(e.value, exact, atol=0.03 * np.abs(exact).max())
    np.testing.assert_allclose(e.value.sum(axis=0), v_full - v_none, atol=1e-9)  # efficiency, class by class
    share = np.bincount(y.numpy(), minlength=3) / len(y)  # V is the class-weighted mean of the class metrics
    np.testing.assert_allclose(e.value[:, 1:] @ share, e.value[:, 0], atol=1e-9)


def _ablator_without_class_2() -> Ablator:
    """The CNN game's ablator, its evaluation set without class 2's images (the means from all of them)."""
    model, x, y, _, _ = _cnn_game()
    keep = y != 2
    split = split_model(model, ["0"])
    pairs = [(x[keep][s:s + 7], y[keep][s:s + 7]) for s in range(0, int(keep.sum()), 7)]
    means = [_ablator(model, "0", 6, x, y).means[0].numpy()]
    return Ablator(split, [("0", 6)], means, cache_eval_set(split, pairs), "cross_entropy", classes=3)


def test_a_class_without_evaluation_images_has_no_value():
    ablator = _ablator_without_class_2()
    estimates, v_full, _ = _run(ablator, estimator="both", rounds=2, permutations_per_round=2, banzhaf_samples=16)
    assert [e.estimator for e in estimates] == ["tmc", "banzhaf"] and np.isnan(v_full[3])
    for e in estimates:
        assert np.isnan(e.value[:, 3]).all() and np.isfinite(e.value[:, :3]).all()


def test_truncation_and_bandit_save_evaluations_and_keep_the_top():
    _, x, y = _planted_data()
    ablator = _ablator(ShapleyPlanted(), "relu", 4, x, y)
    res, _, _ = _estimate(ablator, 10, bandit_k=1)
    assert np.argmax(res.value) == 1  # green: 8 of 24 images
    # after the first walks every marginal is constant, so every unit settles and walks stop early
    assert res.evaluations < 10 * 4
    stats = sh.SampleStats.empty(3)
    for _ in range(5):
        stats.add(np.array([[1.0], [0.0], [np.nan]]))
    assert sh.unsettled(stats, 1, 0.2).tolist() == [False, False, True]  # never sampled: unsettled


def test_focus_samples_only_the_most_ambiguous_unsettled_units():
    means = [1.0, 0.9, 0.5, 0.45, 0.3, 0.1, 0.0, np.nan]  # top 2 clear; 2-5 straddle the 3rd largest (0.5); 7 unsampled
    spread = [0.01, 0.01, 0.3, 0.3, 0.3, 0.3, 0.01, 0.0]
    stats = sh.SampleStats.empty(8)
    for sign in [-1, 1] * 5:
        stats.add(np.array(means)[:, None] + sign * np.array(spread)[:, None])
    assert np.flatnonzero(sh.unsettled(stats, 2, 0.2)).tolist() == [2, 3, 4, 5, 7]
    # the two closest to the threshold for their bound, and the unit without samples (no bound yet)
    assert np.flatnonzero(sh.unsettled(stats, 2, 0.2, focus=2)).tolist() == [2, 3, 7]
    assert np.flatnonzero(sh.unsettled(stats, 2, 0.2, focus=8)).tolist() == [2, 3, 4, 5, 7]
    with pytest.raises(UserError, match=r"'stages.shapley.focus' must be 0 .* got -1"):
        ShapleySettings(focus=-1).check("stages.shapley")

    weight = np.linspace(0.0, 1.0, 12)  # an additive game with a parity term, so the marginals vary

    def walks(orders, chosen):
        def evaluate(removed):
            kept = ~removed
            return (kept @ weight + 0.5 * (kept.sum(1) % 2))[:, None]
        return [(sh.walk(evaluate, o, chosen, evaluate(np.zeros((1, 12), bool))[0], 0.0, sh.WalkSettings()), 0)
                for o in orders]
    _, history, _ = estimate(walks, 12, ShapleySettings(rounds=6, top_k=3, focus=2), seed=0)
    assert history[0][1:] == (12, 12)  # no bound before 2 samples: every unit is sampled in the first round
    assert all(sampled == min(2, unsettled) for _, unsettled, sampled in history[1:])  # then the 2 most ambiguous


def test_walk_truncates_near_the_empty_value():
    calls = []

    def evaluate(masks):
        calls.append(len(masks))
        return 1.0 - masks[:, :2].sum(axis=1) / 2  # only players 0 and 1 matter
    order = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    out = sh.walk(evaluate, order, np.ones(10, bool), 1.0, 0.0, sh.WalkSettings(tolerance=0.01, patience=2, chunk=1))
    assert out[:, 0].tolist() == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] and sum(calls) == 3


@pytest.mark.parametrize("layers, cut, site", [(["layer2.0.conv2"], 2, (128, 8, 8)), (["layer3"], 1, (256, 4, 4)),
                                               (["conv1"], 1, (64, 16, 16))])
def test_split_suffix_reproduces_the_model(layers, cut, site):
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    split = split_model(model, layers)
    assert split.traced
    with torch.no_grad():
        values = split.prefix(x)
        assert len(values) == cut  # layer2.0.conv2 also needs the block input for the residual
        seen = []  # the first player runs in the prefix: the value at its site is one of the cached values
        handle = model.get_submodule(layers[0]).register_forward_hook(lambda m, i, o: seen.append(o.clone()))
        model(x)
        handle.remove()
        cached = values[split.outputs[layers[0]]]
        assert list(split.outputs) == layers and torch.equal(cached, split.chains[layers[0]](seen[0]))
        assert tuple(cached.shape[1:]) == site  # conv1's site is past bn1, relu and the max pool; conv2's past bn2
        torch.testing.assert_close(split.suffix(*values), model(x), rtol=0, atol=1e-5)


def test_ablating_the_cached_output_equals_ablating_in_the_whole_model():
    """Players in two layers with a residual branch: the split (first layer ablated in its cached output, the
    second by a hook) gives the metric the whole model with hooks on both layers gives, coalition by coalition."""
    model = torchvision.models.resnet18(num_classes=4).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    layers = [("layer3.0.conv1", 256), ("layer4", 512)]
    rng = np.random.default_rng(0)
    means = [rng.normal(size=(256, 2, 2)).astype(np.float32), rng.normal(size=(512, 1, 1)).astype(np.float32)]
    removed = rng.random((5, 768)) < 0.5
    values = []
    for split in (split_model(model, [name for name, _ in layers]), whole_model(model)):
        pairs = [(x[:4], y[:4]), (x[4:], y[4:])]
        values.append(Ablator(split, layers, means, cache_eval_set(split, pairs), "cross_entropy").evaluate(removed)[:, 0])
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
    assert len(set(np.round(values[0], 6))) > 1  # the coalitions differ: the comparison can fail


def test_untraceable_model_runs_whole():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    split = split_model(Branchy(), ["conv"])
    assert not split.traced
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(split.suffix(*split.prefix(x)), Branchy.forward(split.suffix, x))


def test_the_rounds_resume_from_a_checkpoint_to_the_values_of_an_uninterrupted_run():
    model = _small_cnn().eval()
    torch.manual_seed(4)
    x, y = torch.randn(30, 3, 8, 8), torch.randint(0, 3, (30,))
    ablator = _ablator(model, "0", 6, x, y, metric="cross_entropy", batch=7)
    v_full, v_none = ablator.evaluate(np.stack([np.zeros(6, bool), np.ones(6, bool)]))  # whole metric, then 3 classes
    cfg = ShapleySettings(rounds=6, permutations_per_round=3, top_k=2, tolerance=0.0, antithetic=True)
    walks = lambda orders, chosen: _walks(ablator)(orders, chosen, v_full, v_none, sh.WalkSettings(0.0))  # noqa: E731
    saved = []
    whole, history, rounds = estimate(walks, 6, cfg, seed=5, save=lambda state: saved.append(copy.deepcopy(state)), columns=4)
    assert rounds == len(saved) and history == saved[-1][1]
    resumed, history_resumed, _ = estimate(walks, 6, cfg, seed=5, state=copy.deepcopy(saved[1]), columns=4)
    np.testing.assert_array_equal(resumed.total, whole.total)
    np.testing.assert_array_equal(resumed.count, whole.count)
    assert history_resumed == history and resumed.evaluations == whole.evaluations
