"""Receptive fields against hand-computed boxes and against the exact gradient support of linear models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipeline.inputs.receptive_field import ReceptiveField, receptive_fields


def _field(model: nn.Module, layer: str, shape=(3, 32, 32)) -> ReceptiveField:
    return receptive_fields(model, [layer], shape)[layer]


def test_hand_computed_fields():
    two_convs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    # each 3x3 adds 2 pixels; padding 1 shifts the start by 1 per layer
    assert _field(two_convs, "2") == ReceptiveField(jump=(1, 1), offset=(-2, -2), size=(5, 5))
    stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
    # conv: size 7, jump 2, offset -3; pool: size 7 + 2*2 = 11, jump 4, offset -3 - 1*2 = -5
    assert _field(stem, "2") == ReceptiveField(jump=(4, 4), offset=(-5, -5), size=(11, 11))
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.Conv2d(4, 4, 3, stride=2))
    # dilation 2 makes a 3x3 span 5; then 3x3 stride 2 adds 2 more
    assert _field(dilated, "1") == ReceptiveField(jump=(2, 2), offset=(0, 0), size=(7, 7))
    asym = nn.Sequential(nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), nn.Conv2d(4, 4, (3, 1), stride=(2, 1)))
    assert _field(asym, "1", (3, 16, 24)) == ReceptiveField(jump=(2, 1), offset=(0, -1), size=(3, 3))
    ceil = nn.Sequential(nn.MaxPool2d(2, stride=2, ceil_mode=True), nn.AvgPool2d(3, stride=1))
    assert _field(ceil, "1", (3, 15, 15)) == ReceptiveField(jump=(2, 2), offset=(0, 0), size=(6, 6))


class _Branches(nn.Module):
    """A residual add whose branches see different extents, and a channel concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 5, padding=2)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        merged = torch.cat([self.a(x) + self.b(x), self.c(x)], dim=1)
        self.up(merged)
        return self.head(merged)


def test_branches_unite_and_global_layers_see_the_whole_image():
    fields = receptive_fields(_Branches(), ["a", "b", "head.0", "head.2", "head", "up"], (3, 20, 20))
    assert fields["a"] == ReceptiveField(jump=(1, 1), offset=(-2, -2), size=(5, 5))
    assert fields["b"] == ReceptiveField()
    assert fields["head.0"].whole_image and fields["head.0"].exact
    assert fields["head.2"].whole_image and fields["head"].exact
    assert fields["up"].whole_image and not fields["up"].exact  # upsampling is not analysed


def test_unanalysable_models_fall_back_without_crashing():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    field = _field(DataDependent(), "conv")
    assert field.whole_image and not field.exact
    assert field.box(2, 3, 32, 40) == (0, 0, 32, 40)


def test_boxes_are_clipped_and_vectorized():
    rf = ReceptiveField(jump=(4, 4), offset=(-5, -5), size=(11, 11))
    assert rf.box(0, 0, 32, 32) == (0, 0, 6, 6)
    assert rf.box(7, 2, 32, 32) == (23, 3, 32, 14)
    y, x = np.array([0, 7, 3]), np.array([0, 2, 5])
    assert rf.boxes(y, x, 32, 32).tolist() == [list(rf.box(a, b, 32, 32)) for a, b in zip(y, x)]


def _positive_linear(model: nn.Module) -> nn.Module:
    """Positive weights and no ReLU/max: the gradient is non-zero exactly on the receptive field."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model.double()


def _support(model: nn.Module, layer: str, shape, y: int, x: int) -> tuple[int, int, int, int]:
    seen = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: seen.__setitem__("o", o))
    img = torch.ones((1, *shape), dtype=torch.float64, requires_grad=True)
    model(img)
    handle.remove()
    seen["o"][0, :, y, x].sum().backward()
    rows, cols = np.nonzero(img.grad[0].abs().sum(0).numpy())
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


@pytest.mark.parametrize("y, x", [(0, 0), (3, 5), (6, 6)])
def test_fields_equal_the_gradient_support(y, x):
    model = _positive_linear(nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.AvgPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, dilation=1), nn.Conv2d(4, 4, (3, 1), stride=1, padding=(1, 0)),
    ))
    shape = (3, 27, 27)
    rf = _field(model, "3", shape)
    assert _support(model, "3", shape, y, x) == rf.box(y, x, 27, 27)


def test_resnet18_layers_match_the_gradient_support():
    model = torchvision.models.resnet18().eval()
    # max pooling and ReLU are data-dependent; swap them for pass-through / average versions of the same geometry
    model.maxpool = nn.AvgPool2d(3, stride=2, padding=1)
    for m in list(model.modules()):
        for name, child in m.named_children():
            if isinstance(child, nn.ReLU):
                setattr(m, name, nn.Identity())
    model = _positive_linear(model)
    shape = (3, 256, 256)
    fields = receptive_fields(model, ["layer1", "layer2.0.conv1", "layer3", "layer4"], shape)
    assert fields["layer4"].size == (435, 435) and fields["layer4"].jump == (32, 32)
    for layer, (y, x) in {"layer1": (10, 20), "layer2.0.conv1": (0, 31), "layer3": (8, 3), "layer4": (4, 4)}.items():
        assert _support(model, layer, shape, y, x) == fields[layer].box(y, x, 256, 256), layer
