"""An exact segmenter for images in the concept world's palette: a pixel within `tolerance` (per channel) of a
palette colour gets that colour's concept, any other pixel none. The world's colours lie 70 apart and its pixels at
most 8 from theirs, so on the world's own images this is its colour masks exactly."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.concepts.vocabulary import COLORS


class PaletteSegmenter(nn.Module):
    def __init__(self, tolerance: int = 24) -> None:
        super().__init__()
        self.labels = [(name, "color") for name in COLORS]
        self.register_buffer("palette", torch.tensor(list(COLORS.values()), dtype=torch.float32))
        self.tolerance = tolerance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * 255).round().permute(0, 2, 3, 1)  # [N, H, W, 3]
        distance = (rgb[..., None, :] - self.palette).abs().amax(dim=-1)  # [N, H, W, colours]
        nearest, index = distance.min(dim=-1)
        return torch.where(nearest <= self.tolerance, index + 1, torch.zeros_like(index))


def palette_segmenter() -> nn.Module:
    """[concepts] segmenter = "pipeline.generators.palette:palette_segmenter"."""
    return PaletteSegmenter()
