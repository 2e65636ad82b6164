"""Class pages: Grad-CAM against the class activation map, IBD's decomposition against planted mixes of concept
vectors, concept vectors against the mini Broden's masks by hand; then a run, the catalog and the pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inputs.models import LayerInfo
from pipeline.stages.classes.gradcam import grad_cam
from pipeline.stages.classes.ibd import ConceptSums, concept_vectors, decompose
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
