"""Units that are not on axis 1, through every stage: planted colour detectors in a token model (class token first)
and in a channels-last model, on the mini Broden whose masks say where every colour is (tests/mini_broden.py).

The planted `relu` units 0, 1, 2 are exactly 1 on patches of pure red, blue and green and 0 elsewhere (16x16
patches of 2x2 pixels: one patch per mask pixel); the token model's unit 3 is 1 at the class token only.
"""

from __future__ import annotations

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
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, split_model

sys.path.insert(0, str(Path(__file__).parent / "assets"))
from tiny_models import planted_tokens  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_local")

STAGES = dict(featvis={"steps": 48, "size": 32, "batch_units": 4, "objective": "channel"},
              dissection={"quantile": 0.5, "resize": "bilinear"},
              shapley={"eval_images": 12, "rounds": 2, "permutations_per_round": 2, "bandit": False},
              similarity={})


def _catalog(folder: Path, factory: str):
    """Every stage on the planted model's `relu` over the 12 mini-Broden images, filed in two class folders."""
    world = write_mini_broden(folder / "broden", images=12)
    for i in range(12):
        (folder / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "broden" / "images" / f"{i:03d}.png", folder / "images" / "ab"[i % 2] / f"{i:03d}.png")
    job = write_job(folder, job_toml(factory, ["relu"], norm=(0.5, 0.5), batch=4, broden="broden", k=2, patch=8,
                                     shard=6, **STAGES))
    return Catalog.open(run_cli(job).catalog), world


@pytest.fixture(scope="module", params=["planted_tokens", "planted_channels_last"])
def planted(request, tmp_path_factory):
    return request.param, *_catalog(tmp_path_factory.mktemp(request.param), request.param)


def test_the_layout_and_the_patch_grid_are_in_the_manifest_and_describe(planted, capsys):
    factory, catalog, _ = planted
    (layer,) = catalog.manifest["layers"]
    tokens = factory == "planted_tokens"
    assert (layer["layout"], layer["shape"], layer["prefix_tokens"]) == ("tokens" if tokens else "nhwc", [4, 16, 16],
                                                                         1 if tokens else 0)
    assert main(["describe", str(catalog.path)]) == 0
    assert ("tokens+1" if tokens else "nhwc") in capsys.readouterr().out  # the layout, with the prefix tokens


def test_top_examples_and_heat_map_peaks_fall_on_the_planted_colour(planted):
    """Each colour unit's top examples are images holding its colour, at 1, peaking on a patch of that colour."""
    _, catalog, world = planted
    examples = catalog.examples("relu")
    top = examples[examples["sign"] == "top"]
    for unit, mask in ((0, world.red), (2, world.green)):
        rows = top[top["unit"] == unit]
        assert len(rows) == 2
        for row in rows.itertuples():
            image = int(Path(catalog.images().set_index("image_id").loc[row.image_id, "path"]).stem)
            assert row.activation == 1.0 and mask[image][row.y, row.x], (unit, image, row.y, row.x)
    crops, heat = catalog.example_images("relu", 0)
    for crop, hot in zip(crops[:2], heat[:2]):  # the heat map over a top example's crop is hottest on red
        y, x = np.unravel_index(np.argmax(hot), hot.shape)
        assert crop[y, x, 0] > 200 and crop[y, x, 1:].max() < 60, crop[y, x]


def test_dissection_labels_the_planted_units(planted):
    _, catalog, world = planted
    units = catalog.units().set_index("unit")
    assert units.loc[0, ["label", "category"]].tolist() == ["redthing", "object"]
    assert units.loc[0, "iou"] == pytest.approx(1.0, abs=1e-6)
    green_images = int((world.scene == 4).sum())
    assert units.loc[2, "label"] == "greenland"
    assert units.loc[2, "iou"] == pytest.approx(world.green.sum() / (green_images * world.green[0].size), abs=1e-6)


def test_prefix_tokens_are_kept_per_image_and_shown(planted, tmp_path):
    factory, catalog, _ = planted
    found = catalog.prefix_tokens("relu")
    if factory != "planted_tokens":
        assert found is None
        return
    values, ids = found
    assert values.shape == (4, 12, 1) and sorted(ids) == list(ids) and len(ids) == 12
    assert (values[3] == 1).all() and (values[:3] == 0).all()  # unit 3 fires at the class token only
    assert catalog.units().set_index("unit").loc[3, "dead"]  # ... never on the grid: the page must say where it fires
    assert main(["render", str(catalog.path), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "units" / "relu" / "3.html").read_text()
    assert "Prefix tokens" in page and "<td>0</td><td>1</td><td>1</td>" in page and "100%" in page


def test_featvis_renders_a_colour_unit_in_its_colour(planted):
    _, catalog, _ = planted
    image = catalog.featvis("relu", 0)[0].astype(float)
    red, green, blue = image[..., 0].mean(), image[..., 1].mean(), image[..., 2].mean()
    assert red > green + 40 and red > blue + 40
    assert catalog.units().set_index("unit").loc[0, "featvis_activation"] > 0.1  # it fires: gray gives 0


def test_shapley_and_similarity_score_every_unit(planted):
    _, catalog, _ = planted
    values = catalog.shapley().set_index("unit")
    assert sorted(values.index) == [0, 1, 2, 3]
    assert values.loc[1, "value"] == 0.0  # the head ignores the blue unit
    assert {0, 1, 2} <= set(catalog.similar("relu")["unit"])  # unit 3 is dead on the grid: similarity skips it


def test_a_removed_token_unit_is_replaced_at_every_token_the_class_token_too():
    """Hand-computed: on a gray image only the class token's unit 3 is 1, so the logits are head(e3) = (1, -1);
    with unit 3 replaced by 0 everywhere they are (0, 0): the log-probability of class 0 goes from
    1 - log(e + 1/e) to -log 2."""
    model = planted_tokens().eval()
    split = split_model(model, ["relu"], frozenset({"relu"}))
    gray = torch.zeros(2, 3, 32, 32)
    zeros = np.zeros((257, 4), np.float32)  # the fill, in the layer's own layout [T, C]
    ablator = Ablator(split, [("relu", 4)], [zeros], cache_eval_set(split, [(gray, torch.tensor([0, 0]))]),
                      "cross_entropy", classes=2, layouts=["tokens"])
    kept, removed = ablator.evaluate(np.array([[False] * 4, [False, False, False, True]]))[:, 0]
    assert kept == pytest.approx(1 - np.log(np.e + 1 / np.e), abs=1e-6)
    assert removed == pytest.approx(-np.log(2), abs=1e-6)


@pytest.mark.parametrize("factory", ["tiny_vit", "tiny_swin", "tiny_convnext"])
def test_todays_architectures_go_through_every_stage(factory, tmp_path):
    """torchvision's own VisionTransformer, SwinTransformer and ConvNeXt, tiny and random, default layers (every
    Conv2d and Linear the forward runs): every unit of every layer in every stage's output, at the module's count."""
    world = write_mini_broden(tmp_path / "broden", images=8)
    for i in range(8):
        (tmp_path / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(world.root / "images" / f"{i:03d}.png", tmp_path / "images" / "ab"[i % 2] / f"{i:03d}.png")
    stages = dict(featvis={"steps": 2, "size": 16, "batch_units": 64, "polish": 1},
                  dissection={"quantile": 0.2}, similarity={}, maps={},
                  shapley={"eval_images": 8, "rounds": 1, "permutations_per_round": 1, "bandit": False},
                  more={"class_pages": {"top": 2, "image_size": 16},
                        "attribution": {"examples": 1, "occluder": 16, "stride": 16}})
    catalog = Catalog.open(run_cli(write_job(tmp_path, job_toml(factory, [], norm=(0.5, 0.5), batch=4, broden="broden",
                                                                k=2, patch=8, **stages))).catalog)
    model = getattr(__import__("tiny_models"), factory)()
    modules = dict(model.named_modules())
    units = catalog.units()
    for layer in catalog.manifest["layers"]:
        module = modules[layer["name"]]
        assert layer["units"] == getattr(module, "out_channels", getattr(module, "out_features", None)), layer
        assert (units["layer"] == layer["name"]).sum() == layer["units"]
        assert catalog.featvis(layer["name"], None).shape[0] == layer["units"]
    layouts = {layer["layout"] for layer in catalog.manifest["layers"]}
    assert layouts >= {"nchw", "nc", "tokens" if factory == "tiny_vit" else "nhwc"}
    everyone = set(zip(units["layer"], units["unit"]))
    assert set(zip(catalog.examples()["layer"], catalog.examples()["unit"])) == everyone
    assert set(zip(catalog.dissection()["layer"], catalog.dissection()["unit"])) == everyone
    assert set(zip(catalog.shapley()["layer"], catalog.shapley()["unit"])) == everyone
    assert catalog.shapley()["value"].notna().all() and len(catalog.similar()) > 0
    assert "GELU" in catalog.manifest["featvis"]["projections_caveat"]
    _context_stages_read_every_layout(catalog, units)


def _context_stages_read_every_layout(catalog: Catalog, units) -> None:
    """The map places every unit with a vector; the class pages' Grad-CAM and the units' Grad-CAM on a token or
    channels-last layer before them are not zero (a units-first view off the forward's path would give no gradient)."""
    assert set(catalog.manifest["unit_map"]) == set(catalog.layers)
    assert units.loc[~units["dead"].astype(bool), "map_x"].notna().all()
    head = dict(getattr(__import__("tiny_models"), catalog.manifest["model"]["name"].split(":")[-1])().named_modules())[
        catalog.manifest["class_pages"]["head"]]
    cams = np.abs(catalog.class_pictures(0)[1])
    assert len(catalog.classes()) == 2 and (cams.max() > 0 or not head.weight.any())  # ViT's head starts at zero
    if catalog.manifest["class_pages"]["head"] == "heads.head":  # the ViT: its last patch tokens never reach the head
        assert catalog.manifest["class_pages"]["layer"] == "conv_proj"
    layers = catalog.manifest["attribution"]["layers"]
    assert set(layers) == set(catalog.layers)
    for name, section in layers.items():
        maps = catalog.attribution(name)[0]
        mine = units[units["layer"] == name].sort_values("unit")
        assert maps.shape[0] == len(mine), name
        varying = maps[(mine["act_std"] > 0).to_numpy()]  # a constant unit (ViT's zero head) has no gradient
        assert varying[:, :, 0].any() or not len(varying), name  # saliency
        if section["gradcam_layer"] and len(varying):
            assert varying[:, :, 1].any(), (name, section["gradcam_layer"])
