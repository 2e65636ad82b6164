"""Connections by expanded weights, against answers worked out by hand on planted networks that the linearization
(ReLU as identity, max-pooling as average) makes linear: stacked convolutions, a batch norm between, a residual
block; then through a run, the query and the unit pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inputs.models import LayerInfo
from pipeline.stages.connections.expanded import expanded_weights, linearized, strongest

SIDE = 16  # a grid large enough that the centre unit's receptive field never meets the border


def _weights(model: nn.Module, earlier: tuple[str, int], later: tuple[str, int]) -> np.ndarray:
    infos = [LayerInfo(name, (units, SIDE, SIDE), 1) for name, units in (earlier, later)]
    point = torch.randn(earlier[1], SIDE, SIDE)  # any point: the linearized network is linear
    return expanded_weights(linearized(model.eval()), *infos, point, (3, SIDE, SIDE))


def _convs(*widths: int) -> list[nn.Conv2d]:
    torch.manual_seed(0)
    return [nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:])]


def test_stacked_convolutions_connect_by_the_sum_of_the_kernel():
    """conv2's centre, through a ReLU and a max-pooling (linearized): d conv2[b] / d conv1[a] summed over positions
    is the sum of conv2's kernel from a to b."""
    conv1, conv2 = _convs(3, 4, 5)
    model = nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2)
    found = expanded_weights(linearized(model.eval()), LayerInfo("0", (4, 2 * SIDE, 2 * SIDE), 1),
                             LayerInfo("3", (5, SIDE, SIDE), 1), torch.randn(4, 2 * SIDE, 2 * SIDE), (3, 2 * SIDE, 2 * SIDE))
    np.testing.assert_allclose(found, conv2.weight.sum(dim=(2, 3)).double().detach().numpy(), atol=1e-5)


def test_through_an_uncataloged_convolution_the_kernels_compose():
    """conv1 -> conv2 -> conv3 with conv2 not cataloged: the convolution of the two kernels, summed, is the product
    of their sums."""
    conv1, conv2, conv3 = _convs(3, 4, 6, 5)
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), conv3)
    expected = conv3.weight.sum(dim=(2, 3)) @ conv2.weight.sum(dim=(2, 3))
    np.testing.assert_allclose(_weights(model, ("0", 4), ("4", 5)), expected.double().detach().numpy(), atol=1e-5)


def test_a_batch_norm_between_scales_each_input():
    conv1, conv2 = _convs(3, 4, 5)
    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(-1.5, 1.5)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    model = nn.Sequential(conv1, norm, nn.ReLU(), conv2)
    expected = conv2.weight.sum(dim=(2, 3)) * scale[None]
    np.testing.assert_allclose(_weights(model, ("0", 4), ("3", 5)), expected.double().detach().numpy(), atol=1e-5)


class _Residual(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv, self.relu = conv, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.relu(x))


def test_a_residual_block_adds_its_identity_path():
    stem, inner = _convs(3, 4, 4)
    model = nn.Sequential(stem, _Residual(inner))
    expected = torch.eye(4) + inner.weight.sum(dim=(2, 3))
    np.testing.assert_allclose(_weights(model, ("0", 4), ("1", 4)), expected.double().detach().numpy(), atol=1e-5)


def test_a_later_layer_that_does_not_read_the_earlier_one_has_no_connections():
    a, b = _convs(3, 4, 4)
    model = _TwoBranches(a, b)
    assert _weights(model, ("a", 4), ("b", 4)) is None


class _TwoBranches(nn.Module):
    def __init__(self, a: nn.Conv2d, b: nn.Conv2d) -> None:
        super().__init__()
        self.a, self.b = a, nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_strongest_keeps_each_sign_strongest_first():
    weights = np.array([[0.5, -2.0, 0.0, 1.5, -0.1]])
    assert strongest(weights, 2) == [(0, 3, 1.5, 0), (0, 0, 0.5, 1), (0, 1, -2.0, 0), (0, 4, -0.1, 1)]


@pytest.fixture(scope="module")
def connected(tmp_path_factory, ray_local):
    """The planted model (conv1 -> ReLU -> max-pool -> conv2 -> ReLU -> average -> fc) cataloged with connections."""
    from catalog_schema import Catalog
    from conftest import job_toml, make_images, run_cli, write_job

    folder = tmp_path_factory.mktemp("connections")
    make_images(folder / "images", count=8)
    job = write_job(folder, job_toml("planted", ["conv1", "conv2", "fc"], k=2, patch=8, connections={"top": 2}))
    return Catalog.open(run_cli(job).catalog)


def _expected() -> dict[tuple[str, str], np.ndarray]:
    """(earlier, later) -> [later units, earlier units] by hand: conv2's kernel sums (the pooling averages four
    positions it then sums over), fc's weights (the average over conv2's 16x16 positions, summed back)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "assets"))
    from tiny_models import Planted

    model = Planted()
    return {("conv1", "conv2"): model.conv2.weight.sum(dim=(2, 3)).detach().double().numpy(),
            ("conv2", "fc"): model.fc.weight.detach().double().numpy()}


def test_a_run_keeps_each_units_strongest_inputs_and_outputs(connected):
    rows = connected.connections()
    for (earlier, later), weights in _expected().items():
        for direction, layer, other, matrix in (("input", later, earlier, weights), ("output", earlier, later, weights.T)):
            mine = rows[(rows["layer"] == layer) & (rows["direction"] == direction)]
            assert set(mine["other_layer"]) == {other}
            for unit, values in enumerate(matrix):
                got = mine[mine["unit"] == unit]
                want = strongest(values[None], 2)
                assert [(r.other_unit, r.rank) for r in got.itertuples()] == [(c, k) for _, c, _, k in want], (layer, unit)
                np.testing.assert_allclose(got["weight"], [w for _, _, w, _ in want], atol=1e-5)
    assert set(rows[rows["layer"] == "conv1"]["direction"]) == {"output"}  # no cataloged layer before conv1
    assert set(rows[rows["layer"] == "fc"]["direction"]) == {"input"}  # none after fc


def test_query_and_unit_pages_show_the_connections(connected, tmp_path, capsys):
    import json

    from pipeline.cli import main

    weights = _expected()[("conv1", "conv2")][0]
    capsys.readouterr()
    assert main(["query", str(connected.path), "--inputs-of", "conv2:0", "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["other_layer"] == "conv1" and found[0]["other_unit"] == int(np.argmax(weights))
    assert [r["weight"] > 0 for r in found] == sorted([r["weight"] > 0 for r in found], reverse=True)  # excitatory first
    assert main(["query", str(connected.path), "--outputs-of", "conv2:9"]) == 2  # conv2 has 6 units
    assert main(["render", str(connected.path), "--out", str(tmp_path / "site")]) == 0
    page = next((tmp_path / "site" / "units").glob("conv2/0.html")).read_text()
    assert "Connections" in page and "excited by: units of conv1" in page and "excites: units of fc" in page
