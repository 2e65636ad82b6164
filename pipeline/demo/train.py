"""Training the demo model on the concept world's scenes, cached by a fingerprint of the recipe.

Input convention (the job file must use the same): ToTensor (0..1), then Normalize with
mean = std = (0.5, 0.5, 0.5) per channel, at the world's size (64 px by default).

Held out: the images of the world's "val" split (index.csv; image index % 5 == 4),
never trained on. Chance is the share of the most common scene among them.
Data order and augmentation (horizontal flips) come from a generator seeded by `seed`.

Cache: next to WEIGHTS (a plain state_dict, torch.load(weights_only=True)) lies
WEIGHTS with suffix .json holding the recipe's fingerprint (sha256 of canonical JSON of
the world's world.json, epochs, seed, batch size, learning rate and ARCHITECTURE), the
weights' sha256, accuracies and seconds; when both match, training is skipped.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from pipeline.concepts.vocabulary import SCENE_NAMES
from pipeline.demo.model import ARCHITECTURE, ConceptCNN
from pipeline.demo.training_cache import fingerprint, train_cached
from pipeline.errors import UserError

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
DEFAULT_LR = 3e-3


@dataclass(frozen=True)
class TrainResult:
    """How training went (a cached result repeats what was recorded): accuracies in 0..1, seconds of training."""

    train_accuracy: float
    heldout_accuracy: float
    chance: float
    seconds: float
    cached: bool
    fingerprint: str


def _recipe(world_json: dict, epochs: int, seed: int, batch_size: int, lr: float) -> dict:
    """Everything that determines the trained weights."""
    return {"world": world_json, "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
            "architecture": ARCHITECTURE, "mean": list(MEAN), "std": list(STD)}


def recipe_fingerprint(world_json: dict, epochs: int, seed: int, batch_size: int, lr: float) -> str:
    """sha256 of the canonical JSON of everything that determines the trained weights."""
    return fingerprint(_recipe(world_json, epochs, seed, batch_size, lr))


def read_world(world: Path) -> dict:
    """The world's world.json; UserError when `world` is not a concept world."""
    try:
        return json.loads((world / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{world} is not a concept world (no readable world.json): make it with "
                        f"`neuron-catalog make-concepts {world}`.") from None


def _load(world: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All images of world/scenes as one normalized tensor, their labels, and the held-out mask."""
    try:
        data = datasets.ImageFolder(world / "scenes", transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{world / 'scenes'} is not a readable ImageFolder ({exc}); regenerate the concept world.") from None
    if tuple(data.classes) != SCENE_NAMES:
        raise UserError(f"{world / 'scenes'} holds scene classes {data.classes}, expected {list(SCENE_NAMES)}: "
                        "a concept world needs at least one image per scene class.")
    with open(world / "index.csv", newline="", encoding="utf-8") as f:
        split = {row["image"]: row["split"] for row in csv.DictReader(f)}
    xs, ys, held = [], [], []
    for i, (path, label) in enumerate(data.samples):
        xs.append(data[i][0])
        ys.append(label)
        held.append(split.get(Path(path).name, "train") == "val")
    return torch.stack(xs), torch.tensor(ys), torch.tensor(held)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(y), 256))
    return correct / len(y)


def _fit(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch_size: int, lr: float) -> nn.Module:
    """Adam with a cosine learning-rate decay; per epoch a seeded shuffle and random horizontal flips."""
    torch.manual_seed(seed)
    model = ConceptCNN(len(SCENE_NAMES))
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, epochs * -(-len(y) // batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        flips = torch.rand(len(y), generator=gen) < 0.5
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            xb = x[idx]
            xb = torch.where(flips[idx].view(-1, 1, 1, 1), xb.flip(3), xb)
            xb = xb.contiguous(memory_format=torch.channels_last)  # convolutions and pooling about 1.7x faster on a CPU
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    return model


def train_demo_model(world: Path, weights_out: Path, *, epochs: int, seed: int, batch_size: int = 64,
                     lr: float = DEFAULT_LR) -> TrainResult:
    """Train ConceptCNN on world/scenes and save its state_dict to `weights_out`, unless the cache says it is there."""
    world, weights_out = Path(world), Path(weights_out)
    if epochs < 1 or batch_size < 1:
        raise UserError(f"demo model training needs epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}.")

    def train() -> tuple[nn.Module, dict]:
        start = time.perf_counter()
        x, y, held = _load(world)
        model = _fit(x[~held], y[~held], epochs, seed, batch_size, lr)
        scored = y[held] if held.any() else y  # a world under 5 images has no held-out image
        return model, {"classes": list(SCENE_NAMES), "train_images": int((~held).sum()), "heldout_images": int(held.sum()),
                       "train_accuracy": _accuracy(model, x[~held], y[~held]),
                       "heldout_accuracy": _accuracy(model, x[held], y[held]),
                       "chance": float(torch.bincount(scored).max()) / len(scored), "seconds": time.perf_counter() - start}

    r = train_cached(weights_out, _recipe(read_world(world), epochs, seed, batch_size, lr), train)
    return TrainResult(r["train_accuracy"], r["heldout_accuracy"], r["chance"], r["seconds"], r["cached"], r["fingerprint"])
