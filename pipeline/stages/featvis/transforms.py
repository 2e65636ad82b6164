"""Transformation robustness: each image gets its own random pad, jitter, scale and rotation per step,
drawn from that image's generator, so an image never depends on what else is in its batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Transforms:
    """Lucid's standard set: pad 12 (constant 0.5), jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4."""

    pad: int = 12
    jitter: int = 12  # the two jitters, combined into one translation of up to this many pixels
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11))

    @classmethod
    def named(cls, name: str) -> Transforms | None:
        return {"standard": cls(), "none": None}[name]

    def draw(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """(dy, dx, scale, angle) for one image and step."""
        dy, dx = rng.integers(-self.jitter, self.jitter + 1, size=2)
        return float(dy), float(dx), float(rng.choice(self.scales)), float(rng.choice(self.angles))

    def apply(self, images: torch.Tensor, draws: list[tuple[float, float, float, float]]) -> torch.Tensor:
        """Pad, then one affine resampling per image (bilinear); output [N, C, S + 2*pad, S + 2*pad]."""
        x = F.pad(images, (self.pad,) * 4, value=0.5)
        size = x.shape[-1]
        theta = []
        for dy, dx, scale, angle in draws:
            a = math.radians(angle)
            cos, sin = math.cos(a) / scale, math.sin(a) / scale
            theta.append([[cos, -sin, 2 * dx / size], [sin, cos, 2 * dy / size]])
        grid = F.affine_grid(torch.tensor(theta, dtype=x.dtype, device=x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
