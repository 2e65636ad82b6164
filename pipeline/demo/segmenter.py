"""The demo segmenter: a small fully convolutional network trained on the concept world's exact masks, one head per
category (colour, object, material), for the demo generator's images. Its held-out per-concept IoU (on the world's
val split) is its error budget: a unit's IoU is read through it.

The segmenter contract (pipeline.generators.segmenter): `labels`, and label numbers [N, 3, H, W] from RGB in [0, 1].
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.concepts.vocabulary import CATEGORY_LABELS
from pipeline.demo.training_cache import train_cached
from pipeline.demo.world_tensors import CATEGORIES, WorldTensors, segmenter_labels, world_tensors

ARCHITECTURE = "WorldSegmenter-v1"
SIZES = tuple(len(CATEGORY_LABELS[c]) + 1 for c in CATEGORIES)  # classes per head, 0: none


class WorldSegmenter(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.labels = segmenter_labels()
        layers, channels = [], 3
        for dilation in (1, 1, 2, 4, 1):
            layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.heads = nn.Conv2d(width, sum(SIZES), 1)
        offsets = torch.tensor([0, *torch.cumsum(torch.tensor(SIZES[:-1]) - 1, 0).tolist()])
        self.register_buffer("offsets", offsets)

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.heads(self.body(x * 2 - 1)).split(SIZES, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picks = torch.stack([head.argmax(dim=1) for head in self.logits(x)], dim=1)  # [N, 3, H, W], 0: none
        return torch.where(picks > 0, picks + self.offsets.view(1, -1, 1, 1), torch.zeros_like(picks))


def world_segmenter() -> nn.Module:
    """Factory for job files: segmenter = "pipeline.demo.segmenter:world_segmenter"."""
    return WorldSegmenter()


def _fit(data: WorldTensors, epochs: int, seed: int) -> WorldSegmenter:
    torch.manual_seed(seed)
    x, y = (data.images[~data.held] + 1) / 2, data.maps[~data.held]
    model = WorldSegmenter()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            sum(F.cross_entropy(head, y[idx, c]) for c, head in enumerate(model.logits(x[idx]))).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def heldout_iou(model: WorldSegmenter, data: WorldTensors) -> dict[str, float]:
    """Per concept present in the val split: IoU of the predicted and the true masks over its pixels."""
    predicted = model((data.images[data.held] + 1) / 2)
    truth = data.maps[data.held]
    out = {}
    for number, (name, category) in enumerate(model.labels, start=1):
        c = CATEGORIES.index(category)
        true = truth[:, c] == (number - int(model.offsets[c]))
        pred = predicted[:, c] == number
        if true.any():
            out[name] = float((true & pred).sum() / (true | pred).sum())
    return out


def train_demo_segmenter(world: Path, weights: Path, *, epochs: int, seed: int) -> dict:
    """Train WorldSegmenter on the world's train split into `weights`, unless the cache says it is there."""
    data, doc = world_tensors(Path(world))

    def train() -> tuple[nn.Module, dict]:
        start = time.perf_counter()
        model = _fit(data, epochs, seed)
        ious = heldout_iou(model, data)
        return model, {"heldout_iou": ious, "mean_iou": sum(ious.values()) / max(1, len(ious)),
                       "seconds": time.perf_counter() - start}

    return train_cached(Path(weights), {"world": doc, "epochs": epochs, "seed": seed, "architecture": ARCHITECTURE,
                                        "data": data.recipe}, train)
