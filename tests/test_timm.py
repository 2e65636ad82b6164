"""timm's architectures: `[model] timm = NAME` builds them offline (pretrained=False), weights from a local file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catalog_schema import Catalog
from conftest import job_toml, make_images, write_job
from pipeline.cli import main
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import ModelRecipe, build_model, resolve_layers

timm = pytest.importorskip("timm", reason="the timm extra: make test installs it")

# (name, smallest input that runs, prefix tokens of its token layers, how many modules the default selection leaves out)
MODELS = [("resnet18", 32, None, 0), ("convnext_atto", 32, None, 0), ("efficientnet_b0", 32, None, 0),
          ("mobilenetv3_small_050", 32, None, 0), ("regnetx_002", 32, None, 0),
          ("vit_tiny_patch16_224", 224, 1, 0), ("deit_tiny_distilled_patch16_224", 224, 2, 0),
          ("swin_tiny_patch4_window7_224", 224, 0, 20)]


@pytest.mark.parametrize("name,size,prefix,left_out", MODELS, ids=[m[0] for m in MODELS])
def test_timm_models_read_every_unit_they_select_at_the_right_count(name, size, prefix, left_out):
    """Every unit at its module's count; a ViT's token layers with their class (and distillation) token apart;
    Swin's window attention (its batch axis holds the windows) left out with the reason, its MLPs read."""
    model = build_model(ModelRecipe("timm", name))
    names = resolve_layers(model, ())
    survey = survey_model(model, names, (3, size, size), explicit=False)
    modules = dict(model.named_modules())
    for info in survey.layers:
        assert info.units == getattr(modules[info.name], "out_channels", getattr(modules[info.name], "out_features", None))
    assert sorted([info.name for info in survey.layers] + [w["name"] for w in survey.left_out]) == sorted(names)
    assert len(survey.left_out) == left_out and all("windows of the image" in w["why"] for w in survey.left_out)
    tokens = [info for info in survey.layers if info.layout == "tokens"]
    assert {info.prefix for info in tokens} == (set() if prefix is None else {prefix})
    if name.startswith("swin"):
        assert all("attn" in w["name"] for w in survey.left_out) and any("mlp" in info.name for info in tokens)


@pytest.mark.usefixtures("ray_local")
def test_a_timm_job_with_local_weights_is_cataloged(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    make_images(tmp_path / "images", count=4, size=32)
    text = job_toml("planted", [], input_size=32, k=1, patch=8, activations={"spectrum_quantiles": 0})  # 4,802 units: few crops
    job = write_job(tmp_path, text.replace(
        'factory = "tiny_models.py:planted"', 'timm = "resnet18"\nweights = "r18.pth"\nnum_classes = 2'))
    assert main(["run", str(job)]) == 0
    catalog = Catalog.open(tmp_path / "catalog")
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(catalog.units()) == sum(getattr(m, "out_channels", getattr(m, "out_features", 0)) for m in convs)
    assert catalog.manifest["model"]["kind"] == "timm" and catalog.manifest["layers_left_out"] == []
    capsys.readouterr()

    job.write_text(job.read_text().replace('timm = "resnet18"', 'timm = "resnet_18"'))
    assert main(["run", str(job)]) == 2
    assert "model.timm = 'resnet_18' is not a timm model. Closest: resnet18" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_local")
def test_a_timm_vit_is_cataloged_with_its_class_token_apart(tmp_path):
    """timm's vit_tiny_patch16_224 (random weights, 224 px, 4 images): each block's MLP hidden neurons, read on the
    14 x 14 patch grid, the class token kept per image; similarity over them."""
    make_images(tmp_path / "images", count=4, size=224)
    text = job_toml("planted", ["blocks.*.mlp.act"], input_size=224, k=1, patch=8, norm=(0.5, 0.5),
                    activations={"spectrum_quantiles": 0}, similarity={})
    job = write_job(tmp_path, text.replace('factory = "tiny_models.py:planted"',
                                           'timm = "vit_tiny_patch16_224"\nnum_classes = 2'))
    assert main(["run", str(job)]) == 0
    catalog = Catalog.open(tmp_path / "catalog")
    assert len(catalog.layers) == 12 and len(catalog.units()) == 12 * 768
    assert {(layer["layout"], tuple(layer["shape"]), layer["prefix_tokens"]) for layer in catalog.manifest["layers"]} == {
        ("tokens", (768, 14, 14), 1)}
    values, ids = catalog.prefix_tokens("blocks.11.mlp.act")
    assert values.shape == (768, 4, 1) and list(ids) == [0, 1, 2, 3] and np.isfinite(values.astype(float)).all()
    examples = catalog.examples("blocks.11.mlp.act")
    assert examples["y"].between(0, 13).all() and examples["x"].between(0, 13).all()
    assert len(catalog.similar("blocks.0.mlp.act")) > 0
