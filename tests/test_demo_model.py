"""The demo model: architecture contract, training above chance on the concept world, the recipe cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.concepts import make_concept_world
from pipeline.demo.model import ConceptCNN, concept_cnn
from pipeline.demo.train import TrainResult, recipe_fingerprint, train_demo_model


def test_layer_names_and_shapes() -> None:
    model = concept_cnn()
    modules = dict(model.named_modules())
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert isinstance(modules[name], nn.Conv2d)
    assert isinstance(modules["fc"], nn.Linear)
    assert sum(isinstance(m, nn.ReLU) for m in modules.values()) == 4
    shapes = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "fc"):
        modules[name].register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 6)
    assert shapes == {"conv1": (16, 64, 64), "conv2": (32, 32, 32), "conv3": (32, 16, 16), "conv4": (64, 8, 8), "fc": (6,)}
    assert ConceptCNN(3, width=8)(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "world"
    make_concept_world(out, images=300, size=64, seed=0)
    return out


def test_trains_above_chance_then_caches(world: Path, tmp_path: Path) -> None:
    weights = tmp_path / "ckpt" / "demo.pth"
    first = train_demo_model(world, weights, epochs=6, seed=0, batch_size=32)
    assert isinstance(first, TrainResult) and not first.cached
    assert first.chance == pytest.approx(1 / 6, abs=0.05)
    assert first.heldout_accuracy >= first.chance + 0.2, first
    assert first.train_accuracy >= first.chance + 0.2, first
    data, stamp = weights.read_bytes(), weights.stat().st_mtime_ns

    state = torch.load(weights, weights_only=True)
    model = concept_cnn()
    model.load_state_dict(state)
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == first.fingerprint
    assert sidecar["heldout_accuracy"] == first.heldout_accuracy and sidecar["chance"] == first.chance

    second = train_demo_model(world, weights, epochs=6, seed=0, batch_size=32)
    assert second.cached and second.fingerprint == first.fingerprint
    assert (second.heldout_accuracy, second.train_accuracy, second.seconds) == (
        first.heldout_accuracy, first.train_accuracy, first.seconds)
    assert weights.read_bytes() == data and weights.stat().st_mtime_ns == stamp
    assert not list(weights.parent.glob("*.tmp-*"))


def test_fingerprint_covers_the_recipe(world: Path) -> None:
    doc = json.loads((world / "world.json").read_text())
    base = recipe_fingerprint(doc, 6, 0, 32, 3e-3)
    assert base == recipe_fingerprint(json.loads(json.dumps(doc)), 6, 0, 32, 3e-3)
    others = {recipe_fingerprint(doc, 7, 0, 32, 3e-3), recipe_fingerprint(doc, 6, 1, 32, 3e-3),
              recipe_fingerprint(doc, 6, 0, 64, 3e-3), recipe_fingerprint(doc, 6, 0, 32, 1e-3),
              recipe_fingerprint(dict(doc, seed=1), 6, 0, 32, 3e-3)}
    assert base not in others and len(others) == 5


def test_replaced_weights_are_retrained(tmp_path: Path) -> None:
    world = make_concept_world(tmp_path / "w", images=24, size=64, seed=1).out
    weights = tmp_path / "m.pth"
    train_demo_model(world, weights, epochs=1, seed=0)
    torch.save(ConceptCNN(6).state_dict(), weights)  # someone overwrote the weights
    assert not train_demo_model(world, weights, epochs=1, seed=0).cached
    assert train_demo_model(world, weights, epochs=1, seed=0).cached
