"""Which axis holds a layer's units, told from the module (never guessed from the shape); torchvision's whole zoo.

Channels-first, channels-last and token outputs are read units first; an output whose positions are no grid of
the image (windows) or whose layout cannot be told is left out of the default selection with its reason (in the
manifest), and refused when named; nothing is misread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from pipeline.errors import UserError
from pipeline.inputs.batches import Batch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import resolve_layers
from pipeline.stages.activations import compute as activations

sys.path.insert(0, str(Path(__file__).parent / "assets"))
from tiny_models import ChannelsLast, windowed  # noqa: E402


class Tokens(nn.Module):
    """A ViT-like model: a patch embedding, a class token first, a Linear over [N, T, C], the class token's head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.mlp = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.mlp(tokens)[:, 0])


class Functional(nn.Module):
    """A convolution by its weights (F.conv2d): no module tells the layout of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


def test_a_channels_last_linear_is_read_on_its_last_axis():
    model = ChannelsLast().eval()
    survey = survey_model(model, resolve_layers(model, ()), (3, 8, 8), explicit=False)
    assert [(info.name, info.shape, info.layout) for info in survey.layers] == [
        ("conv", (4, 8, 8), "nchw"), ("block.1", (6, 8, 8), "nhwc"), ("fc", (2,), "nc")]
    assert survey.left_out == []
    # a block's output has the layout of what produced it: the permute back to channels first
    assert [(info.units, info.layout) for info in survey_model(model, ["block"], (3, 8, 8)).layers] == [(6, "nchw")]
    # the GELU after the Linear: channels last too, told from the Linear's output of the same shape
    assert [(info.units, info.layout) for info in survey_model(model, ["block.2"], (3, 8, 8)).layers] == [(6, "nhwc")]
    x = torch.randn(2, 3, 8, 8)
    direct = model.block[1](model.block[0](model.conv(x)))  # [N, H, W, C]
    seen = {}
    with torch.inference_mode(), tapped(model, survey.layers, lambda name, out: seen.__setitem__(name, out.clone())) as run:
        run(x)
    assert torch.equal(seen["block.1"], direct.permute(0, 3, 1, 2))  # units first: unit c at (y, x) is direct[:, y, x, c]


def test_token_outputs_are_read_on_the_patch_grid_with_the_class_token_apart():
    model = Tokens().eval()
    survey = survey_model(model, resolve_layers(model, ()), (3, 16, 16), explicit=False)
    assert [(info.name, info.shape, info.layout, info.prefix) for info in survey.layers] == [
        ("patch", (8, 4, 4), "nchw", 0), ("mlp", (16, 4, 4), "tokens", 1), ("head", (3,), "nc", 0)]
    x = torch.randn(2, 3, 16, 16)
    grids, prefixes = {}, {}
    with torch.inference_mode(), tapped(model, survey.layers, lambda n, out: grids.__setitem__(n, out.clone()),
                                        lambda n, p: prefixes.__setitem__(n, p.clone())) as run:
        run(x)
    tokens = model.mlp(torch.cat([model.cls.expand(2, -1, -1), model.patch(x).flatten(2).transpose(1, 2)], dim=1))
    # token 1 + 4y + x is patch (y, x) of the 4 x 4 grid, token 0 the class token
    for y, x_ in ((0, 0), (1, 3), (3, 2)):
        assert torch.equal(grids["mlp"][:, :, y, x_], tokens[:, 1 + 4 * y + x_])
    assert torch.equal(prefixes["mlp"], tokens[:, :1])
    assert set(prefixes) == {"mlp"}


def test_positions_that_are_no_grid_of_the_image_are_left_out_with_the_reason():
    """Windows of the image (MaxViT's partitions): the units could be counted, but their positions are not the
    image's, so heat maps and dissection would misplace them; and tokens with no patch embedding before them."""
    model = windowed().eval()
    survey = survey_model(model, resolve_layers(model, ()), (3, 16, 16), explicit=False)
    assert [info.name for info in survey.layers] == ["conv", "fc"]
    (left,) = survey.left_out
    assert (left["name"], left["layout"], left["shape"]) == ("mix", "nhwc", [2, 64, 4, 6])
    assert "is not a grid of the 16x16 input" in left["why"] and "windows" in left["why"]
    with pytest.raises(UserError, match=r"mix outputs \[2, 64, 4, 6\].*not a grid"):
        survey_model(model, ["mix"], (3, 16, 16))
    no_patches = nn.Sequential(nn.Flatten(2), nn.Linear(64, 5)).eval()  # [N, 3, 64] -> [N, 3, 5]: no grid before
    with pytest.raises(UserError, match="its patch grid cannot be told"):
        survey_model(no_patches, ["1"], (3, 8, 8))


def test_an_output_whose_layout_cannot_be_told_needs_the_job_to_say():
    model = nn.Sequential(Functional(), nn.ReLU()).eval()
    with pytest.raises(UserError, match=r"which axis holds its channels.*\[model\] layouts = \{ \"0\" = \"nchw\" \}"):
        survey_model(model, ["0"], (3, 8, 8))
    survey = survey_model(model, ["0", "1"], (3, 8, 8), layouts={"0": "nchw", "1": "nchw"})
    assert [(info.name, info.units) for info in survey.layers] == [("0", 5), ("1", 5)]
    with pytest.raises(UserError, match="'model.layouts' says 0 outputs nc, but it outputs"):
        survey_model(model, ["0"], (3, 8, 8), layouts={"0": "nc"})


def test_modules_forward_never_runs_are_left_out_of_the_default_selection_and_refused_when_named():
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    survey = survey_model(model, resolve_layers(model, ()), (3, 32, 32), explicit=False)
    never = sorted(w["name"] for w in survey.left_out)
    assert never == ["aux1.conv.conv", "aux1.fc1", "aux1.fc2", "aux2.conv.conv", "aux2.fc1", "aux2.fc2"]
    assert all("never called" in w["why"] for w in survey.left_out)
    with pytest.raises(UserError, match="'aux1.fc1' is never called by the model's forward"):
        survey_model(model, ["aux1.fc1"], (3, 32, 32))


HEAVY = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_x_32gf", "convnext_large",
         "efficientnet_v2_l", "regnet_y_16gf", "efficientnet_b7", "regnet_x_16gf", "convnext_base", "swin_b",
         "swin_v2_b", "vit_b_16", "vit_b_32", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d", "maxvit_t",
         *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn"))}
SMALLEST = {"alexnet": 64, "inception_v3": 96, "maxvit_t": 224}
VIT_SIZE = {"vit_b_16": 32, "vit_b_32": 32, "vit_h_14": 28, "vit_l_16": 32, "vit_l_32": 32}  # built for 2 x 2 patches
ZOO = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name
       for name in torchvision.models.list_models(module=torchvision.models)]


def _surveyed(name: str):
    torch.manual_seed(0)
    kwargs = {"image_size": VIT_SIZE[name]} if name in VIT_SIZE else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    size = VIT_SIZE.get(name, SMALLEST.get(name, 32))
    names = resolve_layers(model, ())
    return model, size, names, survey_model(model, names, (3, size, size), explicit=False)


@pytest.mark.parametrize("name", ZOO)
def test_every_torchvision_classifier_reads_every_unit_it_selects_at_the_right_count(name, monkeypatch):
    """Random weights, the default selection (every Conv2d and Linear), the smallest input that runs: each layer
    read has as many units as its module has output channels or features, and every selected module is either
    read or left out with a reason (modules called through their weights, MaxViT's window partitions).
    Shapes and layouts need no trained values: torch.nn.init is a no-op while the model is built (regnet_y_128gf's
    644 M parameters took seconds to draw)."""
    for fn in [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]:
        monkeypatch.setattr(torch.nn.init, fn, lambda tensor, *args, **kwargs: tensor)
    model, _, names, survey = _surveyed(name)
    modules = dict(model.named_modules())
    for info in survey.layers:
        module = modules[info.name]
        assert info.units == getattr(module, "out_channels", getattr(module, "out_features", None)), info.name
    assert sorted([info.name for info in survey.layers] + [w["name"] for w in survey.left_out]) == sorted(names)
    assert all(w["why"] for w in survey.left_out)
    family_linear = {"convnext": "nhwc", "swin": "nhwc", "vit": "tokens"}.get(name.split("_")[0])
    if family_linear:  # their blocks' MLPs are read on the last axis; a ViT's with its class token apart
        assert family_linear in {info.layout for info in survey.layers}
        assert all(info.prefix == (family_linear == "tokens") for info in survey.layers if info.layout == family_linear)
    if name == "maxvit_t":  # its attention blocks' Linears, on windows its own partition code maps back to the grid
        assert survey.left_out == [] and sum(info.layout == "windows" for info in survey.layers) == 88


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0",
                                  "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5", "googlenet",
                                  "convnext_tiny", "swin_t", "swin_v2_t",
                                  pytest.param("vit_b_16", marks=pytest.mark.slow),
                                  pytest.param("maxvit_t", marks=pytest.mark.slow)])
def test_the_activations_stage_reads_every_layer_a_family_selects(name):
    """One architecture a family, two images through the activations stage's computation: one statistic per unit
    of every layer, whatever its layout (a ViT's tokens, Swin's and ConvNeXt's channels last, MaxViT's windows)."""
    model, size, _, survey = _surveyed(name)
    images = torch.randn(2, 3, size, size)
    partial = activations.compute(model, survey.layers, iter([Batch(np.zeros((0,)), images, np.arange(2))]), k=1)
    for info in survey.layers:
        assert partial.layers[info.name].vmax.shape == (info.units,), info.name


@pytest.mark.parametrize("kind", ["window", "grid"])
def test_windowed_positions_go_back_where_the_models_own_partition_took_them(kind):
    """MaxViT's block (torchvision's PartitionAttentionLayer, 4x4 map, 2x2 windows or a 2x2 dilated grid): its MLP's
    [N, G, P, C] output read units first equals what the block's own departition code puts on the grid."""
    from torchvision.models.maxvit import PartitionAttentionLayer

    torch.manual_seed(0)
    block = PartitionAttentionLayer(8, 4, 2, kind, (4, 4), 2, nn.GELU, nn.LayerNorm, 0.0, 0.0, 0.0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), block).eval()
    (info,) = survey_model(model, ["1.mlp_layer.3"], (3, 4, 4)).layers  # the MLP's output Linear
    assert (info.layout, info.shape) == ("windows", (8, 4, 4))
    seen, x = {}, torch.randn(2, 3, 4, 4)
    with torch.inference_mode(), tapped(model, [info], lambda name, out: seen.__setitem__(name, out.clone())) as run:
        run(x)
        windowed = []
        handle = block.mlp_layer[3].register_forward_hook(lambda _m, _i, out: windowed.append(out))
        model(x)
        handle.remove()
        back = block.departition_op(block.departition_swap(windowed[0]), block.p, 4 // block.p, 4 // block.p)
    assert torch.equal(seen["1.mlp_layer.3"], back)


@pytest.mark.usefixtures("ray_local")
def test_a_run_records_what_the_default_selection_left_out_and_describe_says_why(tmp_path, capsys):
    from catalog_schema import Catalog
    from conftest import job_toml, make_images, write_job
    from pipeline.cli import main

    make_images(tmp_path / "images", count=4, size=16)
    job = write_job(tmp_path, job_toml("windowed", [], input_size=16))
    assert main(["run", str(job)]) == 0
    assert "left out 1 module(s) of the default selection" in capsys.readouterr().out
    catalog = Catalog.open(tmp_path / "catalog")
    assert catalog.layers == ["conv", "fc"] and len(catalog.units()) == 4 + 2
    assert [layer["layout"] for layer in catalog.manifest["layers"]] == ["nchw", "nc"]
    (left,) = catalog.manifest["layers_left_out"]
    assert (left["name"], left["layout"], left["shape"]) == ("mix", "nhwc", [2, 64, 4, 6])
    assert main(["describe", str(tmp_path / "catalog")]) == 0
    assert "not a grid of the 16x16 input" in capsys.readouterr().out

    job.write_text(job.read_text().replace("layers = []", 'layers = ["conv", "mix"]'))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "mix outputs [2, 64, 4, 6], [N, H, W, C], channels last, but" in err and "Traceback" not in err
