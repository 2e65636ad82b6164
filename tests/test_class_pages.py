"""Class pages: Grad-CAM against the class activation map, IBD's decomposition against planted mixes of concept
vectors, concept vectors against the mini Broden's masks by hand; then a run, the catalog and the pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inputs.models import LayerInfo
from pipeline.stages.class_pages.gradcam import grad_cam
from pipeline.stages.class_pages.ibd import ConceptSums, concept_vectors, decompose
from pipeline.stages.dissection.concept_masks import LabelSpace


class _GapHead(nn.Module):
    """conv -> in-place ReLU -> global average -> linear: the network CAM is defined on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu, self.fc = nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(inplace=True), nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_is_the_class_activation_map_over_the_positions():
    """On the ReLU's output (the layer the average reads): Grad-CAM = CAM / (H W), CAM_k = sum_c w_kc A_c."""
    model = _GapHead().eval()
    x = torch.randn(3, 3, 8, 6)
    classes = torch.tensor([0, 3, 1])
    found = grad_cam(model, LayerInfo("relu", (5, 8, 6), 1), x, classes)
    acts = torch.relu(model.conv(x)).detach()
    cam = torch.einsum("nc,nchw->nhw", model.fc.weight[classes].detach(), acts)
    np.testing.assert_allclose(found, (cam / 48).numpy(), atol=1e-6)
    assert found.shape == (3, 8, 6) and np.abs(found).max() > 0


def test_grad_cam_through_an_in_place_relu_reads_the_layer_before_it():
    """On the convolution (an in-place ReLU after it): the weights are the gradient's mean, through the ReLU."""
    model = _GapHead().eval()
    x = torch.randn(2, 3, 8, 6)
    classes = torch.tensor([2, 0])
    found = grad_cam(model, LayerInfo("conv", (5, 8, 6), 1), x, classes)
    pre = model.conv(x).detach()
    alive = (pre > 0).float()
    weights = (model.fc.weight[classes].detach()[:, :, None, None] * alive / 48).mean(dim=(2, 3))
    np.testing.assert_allclose(found, torch.einsum("nc,nchw->nhw", weights, pre).numpy(), atol=1e-6)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_a_planted_mix_of_concept_vectors_decomposes_back_to_it():
    rng = np.random.default_rng(0)
    vectors = np.stack([_unit(rng.normal(size=16)) for _ in range(6)])
    weight = 0.6 * vectors[4] + 0.3 * vectors[1] + 0.1 * vectors[2]
    found = decompose(weight, vectors, np.ones(6, bool), steps=7)
    assert sorted(found.concepts) == [1, 2, 4] and found.concepts[0] == 4
    mix = dict(zip(found.concepts, found.coefficients))
    assert mix == pytest.approx({4: 0.6, 1: 0.3, 2: 0.1}, abs=1e-9)
    assert found.residual == pytest.approx(0, abs=1e-9) and found.explained[-1] == pytest.approx(1)
    assert found.explained == sorted(found.explained)


def test_the_residual_is_what_no_concept_explains():
    """A class vector with a part orthogonal to every concept: the residual share is that part's squared norm."""
    vectors = np.eye(6)[:3]  # concepts span the first three axes
    weight = np.array([0.0, 0.6, 0.0, 0.8, 0.0, 0.0])  # 0.64 of the squared norm off the concepts
    found = decompose(weight, vectors, np.ones(3, bool), steps=7)
    assert found.concepts == [1] and found.coefficients == pytest.approx([0.6])
    assert found.residual == pytest.approx(0.64)
    invalid = decompose(weight, vectors, np.array([True, False, True]), steps=7)
    assert invalid.concepts == [] and invalid.residual == 1.0  # only invalid or opposed concepts: nothing explained


def test_concept_vectors_are_the_mean_feature_at_the_concept_minus_the_mean():
    """Two images, a 2x2 feature grid of 3 channels, masks at 4x4: the cells' centres decide; an image-level label
    covers every position. By hand."""
    space = LabelSpace.from_labels([1, 2, 3], ["object", "object", "scene"], ["object", "scene"], ["a", "b", "s"])
    feats = [np.arange(12, dtype=np.float32).reshape(3, 2, 2), -np.ones((3, 2, 2), np.float32)]
    mask = np.zeros((1, 4, 4), np.int32)
    mask[0, :2, :2] = 1  # cell (0, 0): concept a
    mask[0, 2:, :] = 2  # cells (1, 0) and (1, 1): concept b
    sums = ConceptSums.empty(3, 3)
    sums.add(feats[0], {"object": mask}, {}, space)
    sums.add(feats[1], {}, {"scene": (3,)}, space)
    positions = np.concatenate([feats[0].reshape(3, 4).T, feats[1].reshape(3, 4).T])  # [8, C]
    mean = positions.mean(axis=0)
    expected = np.stack([_unit(positions[[0]].mean(0) - mean), _unit(positions[[2, 3]].mean(0) - mean),
                         _unit(positions[4:].mean(0) - mean)])
    vectors, valid = concept_vectors(sums)
    assert valid.all() and sums.counts.tolist() == [1, 2, 4] and sums.positions == 8
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    merged = ConceptSums.empty(3, 3).merged(sums)
    np.testing.assert_array_equal(concept_vectors(merged)[0], vectors)


# --- through a run: the planted colour detectors with a planted head, on the mini Broden --------------------------

def _features(world, i: int) -> np.ndarray:
    """ColorClassifier's `relu` on mini-Broden image i, by construction: channels (red, blue, green) are 1 exactly on
    their colour's pixels; at mask resolution (each mask pixel is a 2x2 block of the 32 px image)."""
    return np.stack([world.red[i], world.blue[i], world.green[i]]).astype(np.float64)


def _hand_vectors(world) -> dict[str, np.ndarray]:
    """Each concept's vector by hand: mean feature at its mask pixels minus the mean over every pixel, unit length."""
    feats = np.stack([_features(world, i) for i in range(len(world.scene))])  # [N, 3, s, s]
    where = {"redthing": world.red, "redpart": world.red & (np.arange(len(world.scene)) % 2 == 1)[:, None, None],
             "wheel": np.zeros_like(world.red), "greenland": np.broadcast_to((world.scene == 4)[:, None, None], world.red.shape),
             "grayland": np.broadcast_to((world.scene == 5)[:, None, None], world.red.shape)}
    where["wheel"][:, :2, :2] = True
    mean = feats.mean(axis=(0, 2, 3))
    return {name: _unit(feats.transpose(0, 2, 3, 1)[mask].mean(axis=0) - mean) for name, mask in where.items()}


@pytest.fixture(scope="module")
def planted_classes(tmp_path_factory, ray_local):
    """ColorClassifier on the mini Broden's images in class folders (grayland = 0, greenland = 1), its head planted:
    class 0's vector is 2 x grayland's concept vector, class 1's 1.5 x greenland's."""
    import shutil
    import sys
    from pathlib import Path

    from catalog_schema import Catalog
    from conftest import job_toml, run_cli, write_job
    from mini_broden import write_mini_broden

    sys.path.insert(0, str(Path(__file__).parent / "assets"))
    from tiny_models import ColorClassifier

    folder = tmp_path_factory.mktemp("classes")
    world = write_mini_broden(folder / "broden", images=12)
    for i, scene in enumerate(world.scene):
        target = folder / "images" / ("greenland" if scene == 4 else "grayland")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "broden" / "images" / f"{i:03d}.png", target / f"{i:03d}.png")
    vectors = _hand_vectors(world)
    model = ColorClassifier()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor(np.stack([2 * vectors["grayland"], 1.5 * vectors["greenland"]])))
        model.fc.bias.zero_()
    torch.save(model.state_dict(), folder / "head.pt")
    text = job_toml("color_classifier", ["relu"], norm=(0.5, 0.5), batch=4, broden="broden", k=2, patch=8,
                    weights="head.pt")
    job = write_job(folder, text.replace("[ray]", "[stages.class_pages]\ntop = 3\nimage_size = 32\n[ray]"))
    return Catalog.open(run_cli(job).catalog), world, model


def test_concept_vectors_match_the_masks_by_hand(planted_classes):
    catalog, world, _ = planted_classes
    import zarr

    stored = zarr.open_array(catalog.store / "concept_vectors" / "relu", mode="r")
    hand = _hand_vectors(world)
    for name, row in zip(stored.attrs["names"], stored[...]):
        np.testing.assert_allclose(row, hand[name], atol=1e-6, err_msg=name)


def test_a_planted_class_vector_decomposes_back_to_its_concept(planted_classes):
    catalog, _, _ = planted_classes
    concepts = catalog.class_concepts()
    for class_index, (name, scale) in enumerate([("grayland", 2.0), ("greenland", 1.5)]):
        mine = concepts[concepts["class_index"] == class_index]
        assert mine["concept"].tolist()[0] == name and len(mine) == 1  # nothing is left for a second concept
        assert mine["coefficient"].iloc[0] == pytest.approx(scale, abs=1e-5)
        assert mine["explained"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    classes = catalog.classes()
    assert classes["class_name"].tolist() == ["grayland", "greenland"]
    assert classes["ibd_residual"].to_numpy() == pytest.approx([0, 0], abs=1e-6)
    assert catalog.manifest["class_pages"]["layer"] == "relu" and catalog.manifest["class_pages"]["head"] == "fc"


def test_accuracy_top_images_and_grad_cam_by_hand(planted_classes):
    """Logits by hand (the head on the averaged detectors); Grad-CAM = CAM / (H W) on `relu`, at 32 px."""
    catalog, world, model = planted_classes
    images = catalog.images().set_index("image_id")
    index_of = {i: int(images.loc[i, "path"].split("/")[-1][:3]) for i in images.index}  # image id -> world image
    w = model.fc.weight.detach().double().numpy()
    logits = {i: w @ _features(world, n).mean(axis=(1, 2)) for i, n in index_of.items()}
    label = images["label_index"].to_dict()
    classes = catalog.classes()
    for c in range(2):
        mine = [i for i in logits if label[i] == c]
        assert classes.loc[c, "images"] == len(mine)
        assert classes.loc[c, "correct"] == sum(int(np.argmax(logits[i]) == c) for i in mine)
        examples = catalog.class_examples(c)
        ranked = sorted(logits, key=lambda i: (-logits[i][c], i))[:3]
        assert examples["image_id"].tolist() == ranked
        np.testing.assert_allclose(examples["logit"], [logits[i][c] for i in ranked], atol=1e-5)
        pictures, cams = catalog.class_pictures(c)
        assert pictures.shape == (3, 32, 32, 3) and cams.shape == (3, 32, 32)
        for cam, i in zip(cams, ranked):
            by_hand = np.einsum("c,chw->hw", w[c], _features(world, index_of[i])).repeat(2, 0).repeat(2, 1) / 1024
            np.testing.assert_allclose(cam, by_hand, atol=1e-6)


def test_class_pages_show_the_class_and_link_both_ways(planted_classes, tmp_path, browser):
    from conftest import check_page
    from pipeline.cli import main

    catalog, _, _ = planted_classes
    site = tmp_path / "site"
    assert main(["render", str(catalog.path), "--out", str(site)]) == 0
    for page in [site / "index.html", site / "classes" / "0.html", site / "classes" / "1.html"]:
        errors, broken = check_page(browser, page.as_uri())
        assert errors == [] and broken == [], page
    page = browser.new_page()
    try:
        page.goto((site / "index.html").as_uri())
        assert page.eval_on_selector_all("#classes + table a", "as => as.map(a => a.textContent)") == ["grayland",
                                                                                                       "greenland"]
        page.click("#classes + table a >> text=greenland")
        page.wait_for_url("**/classes/1.html")
        text = page.inner_text("main")
        classes = catalog.classes()
        assert f"{classes.loc[1, 'correct']} of its {classes.loc[1, 'images']} evaluation images" in text
        assert "0% of the vector's squared norm is left unexplained" in text
        assert page.eval_on_selector_all("table.ibd td:first-child", "ts => ts.map(t => t.textContent)") == ["greenland"]
        assert page.locator("img.class-image").count() == 3
    finally:
        page.close()


def test_describe_sums_the_class_pages_up(planted_classes):
    from pipeline.catalog.describe import describe

    text = describe(planted_classes[0])
    assert "classes      2 pages, Grad-CAM on relu: accuracy" in text
    assert "IBD leaves 0% of a class vector unexplained on average" in text


@pytest.mark.parametrize("factory, classes, expected", [
    ("color_detectors", ("a", "b"), "no nn.Linear's output is the model's output"),
    ("planted", (), "stage 'class_pages' needs labelled images"),
])
def test_a_model_or_data_without_classes_is_refused(tmp_path, capsys, ray_local, factory, classes, expected):
    from conftest import job_toml, make_images, write_job
    from pipeline.cli import main

    make_images(tmp_path / "images", count=4, classes=classes)
    job = write_job(tmp_path, job_toml(factory, ["relu" if factory == "color_detectors" else "conv2"], k=1, patch=8,
                                       more={"class_pages": {}}))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "catalog" / "manifest.json").exists()
