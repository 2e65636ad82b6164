"""timm's architectures: `[model] timm = NAME` builds them offline (pretrained=False), weights from a local file."""

from __future__ import annotations

import pytest
import torch

from catalog_schema import Catalog
from conftest import job_toml, make_images, write_job
from pipeline.cli import main
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import ModelRecipe, build_model, resolve_layers

timm = pytest.importorskip("timm", reason="the timm extra: make test installs it")

# (name, smallest input that runs, the layout of what the default selection leaves out)
MODELS = [("resnet18", 32, set()), ("convnext_atto", 32, set()), ("efficientnet_b0", 32, set()),
          ("mobilenetv3_small_050", 32, set()), ("regnetx_002", 32, set()),
          ("vit_tiny_patch16_224", 224, {"tokens"}), ("deit_tiny_patch16_224", 224, {"tokens"}),
          ("swin_tiny_patch4_window7_224", 224, {"tokens", "nhwc"})]


@pytest.mark.parametrize("name,size,left_out", MODELS, ids=[m[0] for m in MODELS])
def test_timm_models_read_every_unit_they_select_at_the_right_count(name, size, left_out):
    model = build_model(ModelRecipe("timm", name))
    names = resolve_layers(model, ())
    survey = survey_model(model, names, (3, size, size), explicit=False)
    modules = dict(model.named_modules())
    for info in survey.layers:
        assert info.units == getattr(modules[info.name], "out_channels", getattr(modules[info.name], "out_features", None))
    assert sorted([info.name for info in survey.layers] + [w["name"] for w in survey.left_out]) == sorted(names)
    assert {w["layout"] for w in survey.left_out} == left_out


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
