"""Attribution on unit pages against answers by hand: saliency of a linear unit is its kernel, a unit's Grad-CAM on
the layer before it through a linear convolution, an occlusion map of a one-pixel unit, the empirical receptive
field of a unit that reads one pixel of its theoretical 5x5 field; the randomization check's parts; then a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inputs.models import LayerInfo
from pipeline.stages.attribution.gradients import gradient_maps
from pipeline.stages.attribution.occlusion import empirical_size, field_window, occlusion_maps, occluder_positions
from pipeline.stages.attribution.sanity import randomized, rank_correlation
from pipeline.stages.featvis.projections import ProjectionRequest

SIDE = 10


def _two_convs() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)).eval()


def _request(layer: str, unit: int, y: int, x: int, image: int = 0) -> ProjectionRequest:
    return ProjectionRequest(layer, unit, 0, image, y, x, (0, 0, SIDE, SIDE))


def test_saliency_of_a_linear_unit_is_its_kernel_and_grad_cam_is_by_hand():
    model = _two_convs()
    infos = [LayerInfo("0", (4, SIDE, SIDE), 1), LayerInfo("1", (5, SIDE, SIDE), 1)]
    x = torch.randn(2, 3, SIDE, SIDE)
    first, second = _request("0", 2, 4, 5, image=0), _request("1", 3, 6, 3, image=1)
    maps = gradient_maps(model, infos, {"0": None, "1": infos[0]}, x, [0, 1], [first, second])
    expected = torch.zeros(SIDE, SIDE)
    expected[3:6, 4:7] = model[0].weight[2].detach().abs().amax(dim=0)
    torch.testing.assert_close(maps[first].saliency, expected)
    assert maps[first].gradcam is None  # no cataloged layer before the first
    # d unit(6, 3) / d layer0[c] summed over positions = the kernel's sum (all 9 taps inside the 10x10 map)
    weights = model[1].weight[3].detach().sum(dim=(1, 2)) / SIDE ** 2
    by_hand = torch.einsum("c,chw->hw", weights, model[0](x[1:2])[0].detach())
    torch.testing.assert_close(maps[second].gradcam, by_hand, atol=1e-6, rtol=1e-5)


class _CentreReader(nn.Module):
    """Two 3x3 convolutions (a 5x5 theoretical field) whose kernels are zero but at the centre: the unit reads
    exactly one pixel, of the red channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.a.weight.zero_()
            self.b.weight.zero_()
            self.a.weight[0, 0, 1, 1], self.b.weight[0, 0, 1, 1] = 2.0, 1.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_occlusion_of_a_one_pixel_unit_drops_only_where_it_covers_that_pixel():
    model = _CentreReader().eval()
    image = torch.rand(3, SIDE, SIDE) + 1
    req = _request("b", 0, 4, 6)
    found = occlusion_maps(model, [LayerInfo("b", (1, SIDE, SIDE), 1)], image, [req], side=1, stride=1)[req]
    expected = np.zeros((SIDE, SIDE), np.float32)
    expected[4, 6] = 3.0 * float(image[0, 4, 6])  # the unit's value, gone when its pixel is the mean colour (0)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    window = field_window(found, (2, 4), (5, 5))  # the theoretical 5x5 field around (4, 6)
    assert window[2, 2] == pytest.approx(expected[4, 6]) and empirical_size(window) == 1.0
    wide = occlusion_maps(model, [LayerInfo("b", (1, SIDE, SIDE), 1)], image, [req], side=3, stride=2)[req]
    assert (wide[4, 6] > 0) and (wide[0, 0] == 0)  # squares that do not cover the pixel change nothing
    assert occluder_positions((10, 10), 4, 4) == [(y, x) for y in (0, 4, 6) for x in (0, 4, 6)]


def test_the_randomized_model_differs_in_every_layer_and_rank_correlation_is_spearmans():
    model = _two_convs()
    random = randomized(model, seed=3)
    for (name, p), q in zip(model.named_parameters(), random.parameters()):
        assert not torch.equal(p, q), name
    again = randomized(model, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(random.parameters(), again.parameters()))  # seeded
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a ** 2) == pytest.approx(1.0) and rank_correlation(a, -a) == pytest.approx(1.0)
    assert rank_correlation(a, np.zeros_like(a)) == 0.0  # magnitudes: the sign does not count


# --- through a run: the planted model (conv1 unit 0 reads one pixel of its 3x3 field) ---------------------------

@pytest.fixture(scope="module")
def attributed(tmp_path_factory, ray_local):
    """The planted model's conv1, conv2 and fc with attribution maps of 2 examples each, a 1-pixel occluder."""
    from catalog_schema import Catalog
    from conftest import job_toml, make_images, run_cli, write_job

    folder = tmp_path_factory.mktemp("attribution")
    make_images(folder / "images", count=8)
    text = job_toml("planted", ["conv1", "conv2", "fc"], k=2, patch=6)
    job = write_job(folder, text.replace("[ray]", "[stages.attribution]\nexamples = 2\noccluder = 1\nstride = 1\n[ray]"))
    return Catalog.open(run_cli(job).catalog)


def test_a_run_maps_every_top_example_and_finds_the_one_pixel_field(attributed):
    units = attributed.units().set_index(["layer", "unit"])
    assert units.loc[("conv1", 0), "rf_size"] == 3.0
    assert units.loc[("conv1", 0), "erf_size"] == pytest.approx(1.0)  # the red detector reads its centre pixel only
    assert (units["erf_size"] <= units["rf_size"] + 1e-6).all()
    for layer, count in (("conv1", 4), ("conv2", 6), ("fc", 3)):
        maps, fields = attributed.attribution(layer)
        assert maps.shape == (count, 2, 3, 6, 6) and fields.shape == (count, 6, 6)
        assert (maps[:, :, 0].reshape(count * 2, -1).max(axis=1) == 255).all()  # every example has a saliency map
    assert not attributed.attribution("conv1")[0][:, :, 1].any()  # no cataloged layer before conv1: no Grad-CAM
    section = attributed.manifest["attribution"]
    assert section["layers"]["conv2"]["gradcam_layer"] == "conv1" and section["layers"]["conv1"]["gradcam_layer"] is None
    assert set(section["layers"]["conv2"]["sanity"]) == {"saliency", "gradcam", "deconvnet", "guided"}
    for verdicts in (layer["sanity"] for layer in section["layers"].values()):
        for v in verdicts.values():
            assert -1 <= v["rank_correlation"] <= 1 and v["passes"] == (v["rank_correlation"] < section["max_correlation"])
            assert v["examples"] >= 2


def test_the_unit_page_shows_the_maps_the_field_and_the_verdicts(attributed, tmp_path, browser):
    from conftest import check_page
    from pipeline.cli import main

    site = tmp_path / "site"
    assert main(["render", str(attributed.path), "--out", str(site)]) == 0
    page_file = site / "units" / "conv2" / "3.html"
    errors, broken = check_page(browser, page_file.as_uri())
    assert errors == [] and broken == []
    text = page_file.read_text()
    for shown in ("gradient saliency", "Grad-CAM on conv1", "occlusion", "Empirical receptive field",
                  "Model-randomization check", "guided backpropagation"):
        assert shown in text, shown


def test_describe_states_each_methods_verdicts(attributed):
    from pipeline.catalog.describe import describe

    text = describe(attributed)
    line, = [ln for ln in text.splitlines() if ln.startswith("attribution")]
    verdicts = attributed.manifest["attribution"]["layers"]
    passes = sum(layer["sanity"]["gradcam"]["passes"] for layer in verdicts.values() if "gradcam" in layer["sanity"])
    assert line.startswith("attribution  3 layer(s)") and f"gradcam passes at {passes} of 2" in line


def test_a_rerun_reuses_the_unchanged_layers_maps_and_recomputes_a_retrained_one(attributed, tmp_path):
    """With --previous: the same model reuses every layer as it was; fc retrained recomputes fc alone."""
    import shutil
    import sys

    from catalog_schema import Catalog
    from conftest import ASSETS
    from pipeline.cli import main

    sys.path.insert(0, str(ASSETS))
    from tiny_models import planted

    folder = attributed.path.parent
    job = folder / "job.toml"
    assert main(["run", str(job), "--out", str(tmp_path / "same"), "--previous", str(attributed.path)]) == 0
    same = Catalog.open(tmp_path / "same")
    assert {layer for layer, r in same.manifest["reuse"]["stages"]["attribution"].items() if r["action"] == "reused"} == \
        {"conv1", "conv2", "fc"}
    assert same.manifest["attribution"] == attributed.manifest["attribution"]
    for layer in ("conv1", "conv2", "fc"):
        for mine, theirs in zip(same.attribution(layer), attributed.attribution(layer)):
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(same.units()["erf_size"].to_numpy(), attributed.units()["erf_size"].to_numpy())
    model = planted()
    with torch.no_grad():
        model.fc.weight.mul_(-1)
    torch.save(model.state_dict(), tmp_path / "tuned.pt")
    shutil.copy(job, tmp_path / "job.toml")
    shutil.copy(folder / "tiny_models.py", tmp_path / "tiny_models.py")
    (tmp_path / "images").symlink_to(folder / "images")
    text = (tmp_path / "job.toml").read_text().replace('factory = "tiny_models.py:planted"',
                                                      'factory = "tiny_models.py:planted"\nweights = "tuned.pt"')
    (tmp_path / "job.toml").write_text(text)
    assert main(["run", str(tmp_path / "job.toml"), "--out", str(tmp_path / "tuned"), "--previous", str(attributed.path)]) == 0
    tuned = Catalog.open(tmp_path / "tuned")
    actions = {layer: r["action"] for layer, r in tuned.manifest["reuse"]["stages"]["attribution"].items()}
    assert actions == {"conv1": "reused", "conv2": "reused", "fc": "computed"}
    assert list(tuned.manifest["attribution"]["layers"]) == ["conv1", "conv2", "fc"]
