"""The activations stage in-process (no Ray), checked against statistics computed directly with torch/numpy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.model_survey import survey_model
from pipeline.stages.activations import compute as activations
from pipeline.stages.activations.ranked import PAD_ID, Ranked


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(5, 4, 3, stride=2), nn.Flatten(), nn.LazyLinear(3)).eval()


def _batches(x: torch.Tensor, size: int):
    for s in range(0, len(x), size):
        yield Batch(np.zeros((0,)), x[s:s + size], np.arange(s, min(s + size, len(x)), dtype=np.int64))


def test_statistics_match_direct_computation():
    model = _model()
    model(torch.zeros(1, 3, 12, 12))  # materialize the lazy layer
    x = torch.randn(10, 3, 12, 12)
    layers = survey_model(model, ["0", "1", "2", "4"], (3, 12, 12)).layers
    partial = activations.compute(model, layers, _batches(x, 4), k=3)
    with torch.no_grad():
        conv0 = model[0](x)
        relu = torch.relu(conv0)  # the in-place ReLU must not have leaked into layer "0"'s statistics
    got = partial.layers["0"]
    np.testing.assert_allclose(got.vmax, conv0.amax(dim=(0, 2, 3)).numpy())
    np.testing.assert_allclose(got.total / (10 * 144), conv0.mean(dim=(0, 2, 3)).double().numpy(), rtol=1e-5)
    np.testing.assert_array_equal(got.positive, (conv0 > 0).sum(dim=(0, 2, 3)).numpy())
    np.testing.assert_allclose(partial.layers["1"].vmin, relu.amin(dim=(0, 2, 3)).numpy())
    # top-3 of unit 2 by spatial max, with its arg-max position
    spatial = conv0[:, 2].reshape(10, -1)
    best = torch.argsort(spatial.amax(dim=1), descending=True)[:3]
    assert got.top.image_id[2].tolist() == best.tolist()
    assert got.top.position[2, 0] == spatial[best[0]].argmax().item()
    assert partial.layers["4"].map_sum.shape == (3, 1, 1)  # a Linear layer: [N, C] as 1x1 maps
    assert partial.images == 10


def test_ties_go_to_smaller_image_id_whatever_the_merge_order():
    values = np.array([[1.0, 2.0, 2.0, 2.0]], np.float32)
    a = Ranked(values[:, :2], np.array([[5, 9]]), np.zeros((1, 2), np.int64))
    b = Ranked(values[:, 2:], np.array([[3, 7]]), np.zeros((1, 2), np.int64))
    empty = Ranked.empty(1, 2, True)
    for left, right in ((a, b), (b, a)):
        merged = empty.merged(left, True).merged(right, True)
        assert merged.image_id.tolist() == [[3, 7]]
    bottom = Ranked.empty(1, 3, False).merged(a, False).merged(b, False)
    assert bottom.image_id.tolist() == [[5, 3, 7]]


def test_merge_is_associative_and_shard_independent():
    model = _model()
    model(torch.zeros(1, 3, 12, 12))
    x = torch.randn(12, 3, 12, 12)
    layers = survey_model(model, ["0", "2"], (3, 12, 12)).layers
    whole = activations.compute(model, layers, _batches(x, 4), k=4)
    parts = [activations.compute(model, layers, _batches(x[s:s + 4], 4), k=4) for s in range(0, 12, 4)]
    for i, p in enumerate(parts):  # shift ids to the global numbering
        for lp in p.layers.values():
            for r in (lp.top, lp.bottom):
                r.image_id[r.image_id != PAD_ID] += 4 * i
    merged = activations.merge(parts[2], activations.merge(parts[0], parts[1]))
    for name in ("0", "2"):
        w, m = whole.layers[name], merged.layers[name]
        np.testing.assert_array_equal(w.top.image_id, m.top.image_id)
        np.testing.assert_array_equal(w.bottom.position, m.bottom.position)
        np.testing.assert_array_equal(w.vmax, m.vmax)
        np.testing.assert_allclose(w.total, m.total, rtol=1e-12)


def test_fewer_images_than_k_leaves_padding_out_of_the_examples():
    from pipeline.inputs.receptive_field import receptive_fields

    model = _model()
    model(torch.zeros(1, 3, 12, 12))
    layers = survey_model(model, ["0"], (3, 12, 12)).layers
    partial = activations.compute(model, layers, _batches(torch.randn(2, 3, 12, 12), 4), k=5)
    rf = receptive_fields(model, ["0"], (3, 12, 12))["0"]
    result = activations.finalize(partial, layers[0], rf, (12, 12))
    assert len(result.examples["unit"]) == 5 * 2 * 2  # 5 units, top and bottom, 2 images each
    assert set(result.examples["image_id"].tolist()) == {0, 1}


def test_a_channels_last_output_reduces_as_its_units_first_copy():
    """NHWC and token layers are reduced where they lie ([N, H*W, C]) instead of copied units first: the same top and
    bottom images, positions (first occurrence among ties: values are small integers) and statistics."""
    rng = np.random.default_rng(0)
    native = torch.tensor(rng.integers(-3, 4, size=(6, 5, 4, 7)), dtype=torch.float32)  # [N, H, W, C]
    view = native.permute(0, 3, 1, 2)  # units first, channels innermost in memory
    ids = np.arange(10, 16)
    probe = np.array([True, False, True, False, False, True])
    lying = activations.reduce_batch(view, ids, k=3, probe=probe, spectrum=True)
    copied = activations.reduce_batch(view.contiguous(), ids, k=3, probe=probe, spectrum=True)
    for ranked in ("top", "bottom"):
        for field in ("value", "image_id", "position"):
            assert np.array_equal(getattr(getattr(lying, ranked), field), getattr(getattr(copied, ranked), field))
    for field in ("total", "total_sq", "positive", "vmax", "vmin", "map_sum", "probe"):
        assert np.allclose(getattr(lying, field), getattr(copied, field)), field
    assert np.array_equal(lying.maxima.positions[0], copied.maxima.positions[0])
