"""A dictionary's features cataloged as units, against ground truth built here: a layer in superposition (three
one-colour features stored along known directions in two channels, at strengths scattered by position, tests/assets/tiny_models.py `Superposed`) on
the mini Broden, whose masks say where every colour is; and the feature-ablation Shapley value by exact
enumeration of every coalition of four planted features."""

from __future__ import annotations

import itertools
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog_schema import Catalog
from conftest import job_toml, run_cli, write_job
from mini_broden import write_mini_broden
from pipeline.cli import main
from pipeline.inputs.features import Dictionary, FeatureLayer, feature_layer, layer_modules
from pipeline.stages.shapley import estimator as sh
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, whole_model

sys.path.insert(0, str(Path(__file__).parent / "assets"))
from tiny_models import Superposed, superposed_directions  # noqa: E402

FEATURES = "mix..features"
PLANTED = {"redthing": 0, "greenland": 1, "grayland": 2}  # concept -> planted direction (red, green, gray)


@pytest.fixture(scope="module")
def superposed(tmp_path_factory):
    """Every stage on `mix` of the superposed model and its dictionary's features, over 12 mini-Broden images."""
    folder = tmp_path_factory.mktemp("superposed")
    world = write_mini_broden(folder / "broden", images=12)
    for i in range(12):
        (folder / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "broden" / "images" / f"{i:03d}.png", folder / "images" / "ab"[i % 2] / f"{i:03d}.png")
    text = job_toml("superposed", ["mix"], norm=(0.5, 0.5), batch=4, broden="broden", k=3, patch=8, shard=6,
                    dissection={"quantile": 0.5, "resize": "bilinear"},
                    featvis={"steps": 48, "size": 32, "batch_units": 4, "objective": "channel"},
                    shapley={"eval_images": 12, "rounds": 2, "permutations_per_round": 2, "bandit": False},
                    similarity={}, maps={})
    text += ('\n[stages.dictionary]\nlayers = ["mix"]\nfeatures = 16\nk = 1\nsteps = 3000\nlr = 0.003\nbatch = 256\n'
             'buffer = 4096\neval_images = 4\n')
    return Catalog.open(run_cli(write_job(folder, text)).catalog), world


def _recovered(catalog: Catalog) -> dict[str, int]:
    """concept -> the feature that fires whose decoder lies nearest its planted direction (cosine > 0.95)."""
    cos = catalog.dictionary("mix")["decoder"] @ superposed_directions().numpy().T  # [features, planted]
    dead = catalog.units().set_index(["layer", "unit"]).loc[FEATURES, "dead"].to_numpy(bool)
    cos[dead] = -1  # a dictionary larger than needed keeps spare copies that never fire
    found = {concept: int(cos[:, i].argmax()) for concept, i in PLANTED.items()}
    assert all(cos[f, PLANTED[c]] > 0.95 for c, f in found.items()), np.round(cos, 3)
    return found


@pytest.mark.usefixtures("ray_local")
def test_every_planted_feature_is_one_unit_labelled_with_its_concept(superposed):
    """Each planted direction is one feature whose dissection label is its concept, whose top examples peak on a
    patch of its colour, while the layer's two neurons (each reading several colours) cover fewer concepts."""
    catalog, world = superposed
    units = catalog.units().set_index(["layer", "unit"])
    masks = {"redthing": world.red, "greenland": world.green, "grayland": ~world.red & ~world.blue & ~world.green}
    top = catalog.examples(FEATURES)
    top = top[top["sign"] == "top"]
    paths = catalog.images().set_index("image_id")["path"]
    for concept, feature in _recovered(catalog).items():
        assert units.loc[(FEATURES, feature), "label"] == concept
        assert units.loc[(FEATURES, feature), "interpretable"]
        rows = top[top["unit"] == feature]
        assert len(rows) == 3
        for row in rows.itertuples():
            image = int(Path(paths.loc[row.image_id]).stem)
            assert row.activation > 0 and masks[concept][image][row.y, row.x], (concept, image, row.y, row.x)
    found = _recovered(catalog)
    assert units.loc[(FEATURES, found["redthing"]), "purity"] == 1.0  # every one of the 12 images holds red
    # green fires on the 6 greenland images only: its 10 top images are those and 4 where it is 0
    assert units.loc[(FEATURES, found["greenland"]), "purity"] == pytest.approx(0.6)
    neurons = set(units.loc["mix"]["label"][units.loc["mix"]["interpretable"]])
    features = set(units.loc[FEATURES]["label"][units.loc[FEATURES]["interpretable"].astype(bool)])
    assert set(PLANTED) <= features and len(neurons) < len(PLANTED)


@pytest.mark.usefixtures("ray_local")
def test_describe_and_the_site_compare_neurons_with_features(superposed, tmp_path, capsys):
    catalog, _ = superposed
    assert main(["describe", str(catalog.path)]) == 0
    out = capsys.readouterr().out.split("neurons vs features")[1]
    neurons, features = (line.split() for line in out.splitlines()[2:4])
    assert neurons[0] == "mix" and features[0] == FEATURES and int(features[5]) >= 3 > int(neurons[5])
    assert main(["render", str(catalog.path), "--out", str(tmp_path / "site")]) == 0
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Neurons vs features" in index and f">{FEATURES}</a>" in index
    feature = _recovered(catalog)["redthing"]
    page = (tmp_path / "site" / "units").glob(f"*features*/{feature}.html")
    text = next(page).read_text()
    assert "reads most: the neurons of mix" in text and "mix:0" in text
    neuron = next((tmp_path / "site" / "units").glob("mix/0.html")).read_text()
    assert f"written by: the features of {FEATURES}" in neuron and f"{FEATURES}:{feature}" in neuron


@pytest.mark.usefixtures("ray_local")
def test_every_stage_catalogs_every_feature(superposed):
    catalog, _ = superposed
    units = catalog.units()
    assert (units["layer"] == FEATURES).sum() == 16
    features = units[units["layer"] == FEATURES].set_index("unit")
    assert features["shapley"].notna().all() and features["featvis_activation"].notna().all()
    red = _recovered(catalog)["redthing"]
    image = torch.tensor(catalog.featvis(FEATURES, red)[0]).permute(2, 0, 1)[None].float() / 255
    assert features.loc[red, "featvis_activation"] == pytest.approx(_pre_activation(catalog, image, red), abs=1e-4)
    weights = catalog.similar(FEATURES)
    assert set(weights["kind"]) == {"activation", "weight"}  # decoder cosine beside activation correlation
    layer = next(layer for layer in catalog.manifest["layers"] if layer["name"] == FEATURES)
    assert layer["shape"] == [16, 16, 16]
    _features_are_mapped_by_their_decoder_directions(catalog, features)


def _features_are_mapped_by_their_decoder_directions(catalog: Catalog, features) -> None:
    """The map places features by their decoder rows (the neurons by their probe activations)."""
    from pipeline.stages.similarity.neighbours import cosine_rows
    from pipeline.stages.unit_map.layout import unit_layout

    assert catalog.manifest["unit_map"][FEATURES] == {"method": "pacmap", "vectors": "decoder directions", "placed": 16}
    assert catalog.manifest["unit_map"]["mix"]["vectors"] == "probe activations"
    rows = cosine_rows(catalog.dictionary("mix")["decoder"])
    expected = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=0).xy
    np.testing.assert_array_equal(features[["map_x", "map_y"]].to_numpy(np.float32), expected)


def _pre_activation(catalog: Catalog, image: torch.Tensor, feature: int) -> float:
    """Lucid's direction objective by hand: the feature's encoder pre-activation W_enc (s x - b_dec) + b_enc on `mix`'s
    output x, averaged over positions (the "channel" objective), for an image in [0, 1]."""
    d = catalog.dictionary("mix")
    seen = []
    model = Superposed().eval()
    model.mix.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model((image - 0.5) / 0.5)
    x = seen[0][0].permute(1, 2, 0).reshape(-1, 2).numpy()
    return float(((x * d["scale"] - d["decoder_bias"]) @ d["encoder"][feature] + d["encoder_bias"][feature]).mean())


def _planted_dictionary(colors: int = 4, channels: int = 3) -> Dictionary:
    """The superposed layer's exact dictionary: decoder and encoder rows along the planted directions, k = 1."""
    d = superposed_directions(colors, channels).numpy()
    return Dictionary(d.copy(), np.zeros(colors, np.float32), d.copy(), np.zeros(channels, np.float32), 1, 1.0)


def _images(n: int = 16, seed: int = 3) -> torch.Tensor:
    """Images of 2x2 patches of the four palette colours, normalized (mean 0.5, std 0.5)."""
    from tiny_models import PALETTE
    palette = torch.tensor(list(PALETTE.values()))
    which = torch.randint(0, 4, (n, 8, 8), generator=torch.Generator().manual_seed(seed))
    return palette[which].permute(0, 3, 1, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)


def _by_hand(model: Superposed, x: torch.Tensor, y: torch.Tensor, removed: tuple[int, ...]) -> float:
    """Mean log-probability of the label with the removed features' planted contributions subtracted from `mix`:
    the planted code of colour i at a patch is detect's channel i, its direction superposed_directions()[i]."""
    directions = superposed_directions(4, 3)
    codes = []
    hooks = [model.detect.register_forward_hook(lambda _m, _i, out: codes.append(out)),
             model.mix.register_forward_hook(lambda _m, _i, out: out - torch.einsum(
                 "nfhw,fc->nchw", codes[-1][:, list(removed)], directions[list(removed)]))]
    with torch.no_grad():
        logp = torch.log_softmax(model(x), dim=1)[torch.arange(len(y)), y]
    for h in hooks:
        h.remove()
    return float(logp.mean())


def test_feature_shapley_matches_exact_enumeration_of_every_coalition():
    """Four planted features in three channels; removing a feature subtracts its decoder contribution everywhere.
    Exact Shapley values from all 16 coalitions, computed by hand, against the stage's own evaluator and walks."""
    model = Superposed(colors=4, channels=3).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[20.0, -10.0, 5.0], [-10.0, 15.0, -5.0]]))
    FeatureLayer(feature_layer("mix"), "nchw", _planted_dictionary()).install(model)
    x = _images()
    y = torch.tensor([0, 1] * 8)
    values = {s: _by_hand(model, x, y, s) for r in range(5) for s in itertools.combinations(range(4), r)}
    exact = np.zeros(4)
    for s, v in values.items():
        for i in set(range(4)) - set(s):
            weight = math.factorial(len(s)) * math.factorial(4 - len(s) - 1) / math.factorial(4)
            exact[i] += weight * (v - values[tuple(sorted((*s, i)))])
    split = whole_model(model)
    ablator = Ablator(split, [(feature_layer("mix"), 4)], [np.zeros((4, 8, 8), np.float32)],
                      cache_eval_set(split, [(x[:8], y[:8]), (x[8:], y[8:])]), "cross_entropy", classes=2)
    for s, v in values.items():
        removed = np.isin(np.arange(4), s)[None]
        assert ablator.evaluate(removed)[0, 0] == pytest.approx(v, abs=1e-5), s
    v_full, v_none = ablator.evaluate(np.zeros((1, 4), bool))[0], ablator.evaluate(np.ones((1, 4), bool))[0]
    walks = [sh.walk(ablator.evaluate, np.array(order), np.ones(4, bool), v_full, v_none, sh.WalkSettings())[:, 0]
             for order in itertools.permutations(range(4))]  # the stage's permutation walk, every permutation once
    assert np.abs(exact).max() > 0.1 and exact.sum() == pytest.approx(v_full[0] - v_none[0], abs=1e-5)
    np.testing.assert_allclose(np.mean(walks, axis=0), exact, atol=1e-5)
    assert layer_modules(model)[feature_layer("mix")].layer_name == feature_layer("mix")


def test_a_token_layers_features_keep_its_layout_and_prefix_tokens():
    """A dictionary over the planted token model's `relu` ([N, 257, 4], class token first): the tap reads its codes
    on the 16x16 patch grid and at the class token, and removing a feature subtracts its decoder row at every
    token, the class token too (the head reads both)."""
    from pipeline.inputs.layer_taps import tapped
    from pipeline.inputs.models import LayerInfo
    from tiny_models import planted_tokens

    model = planted_tokens().eval()
    eye = np.eye(4, dtype=np.float32)  # features = the channels themselves: codes equal the layer's output
    FeatureLayer(feature_layer("relu"), "tokens", Dictionary(eye, np.zeros(4, np.float32), eye.copy(),
                                                             np.zeros(4, np.float32), 4, 1.0)).install(model)
    info = LayerInfo(feature_layer("relu"), (4, 16, 16), 1, "tokens", prefix=1)
    red = torch.ones(1, 3, 32, 32) * torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    seen = {}
    with torch.no_grad(), tapped(model, [info], seen.__setitem__, lambda name, p: seen.__setitem__("prefix", p)) as run:
        run(red)
    assert seen[info.name].shape == (1, 4, 16, 16) and (seen[info.name][0, 0] == 1).all()  # the red unit, everywhere
    assert seen["prefix"].tolist() == [[[0.0, 0.0, 0.0, 1.0]]]  # the class token's unit 3
    split = whole_model(model)
    ablator = Ablator(split, [(info.name, 4)], [np.zeros((257, 4), np.float32)],
                      cache_eval_set(split, [(red, torch.tensor([1]))]), "cross_entropy", classes=2, layouts=["tokens"])
    removed = {}
    hook = model.relu.register_forward_hook(lambda _m, _i, out: out * torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with torch.no_grad():
        removed["by hand"] = float(torch.log_softmax(model(red), 1)[0, 1])  # units 0 and 3 zeroed at every token
    hook.remove()
    assert ablator.evaluate(np.array([[True, False, False, True]]))[0, 0] == pytest.approx(removed["by hand"], abs=1e-6)


@pytest.mark.parametrize("patterns,selected", [
    (("mix",), ["mix"]),
    (("mix..features",), [FEATURES]),
    (("*..features", "mix"), ["mix", FEATURES]),
    (("nope..features",), "stages.featvis.layers selects nope..features, which model.layers does not"),
    (("head",), "stages.featvis.layers selects head, which model.layers does not"),
], ids=["module", "features", "glob", "no such features", "outside"])
def test_a_stage_selects_features_only_by_their_name(patterns, selected):
    from pipeline.errors import UserError
    from pipeline.inputs.models import select_among

    if isinstance(selected, str):
        with pytest.raises(UserError, match=selected):
            select_among(Superposed(), patterns, ["mix", FEATURES], "stages.featvis.layers")
    else:
        assert select_among(Superposed(), patterns, ["mix", FEATURES], "stages.featvis.layers") == selected
