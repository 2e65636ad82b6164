"""Generators for the generator tests, planted so that every answer is known without training.

`planted_layout`: a latent of 12 numbers places four objects, each in its own quadrant of a 32 px image, as 8 x 8 px
squares on a 4 px grid (object k is present when z[3k] > -0.3; z[3k+1], z[3k+2] pick one of 3 x 3 places).
Layer `coarse` [N, 64, 8, 8] holds the layout on the grid, `layout` the same at 32 x 32 (nearest), and `paint` colours
each pixel: red where channel 0 is over 0.5, green (1), blue (2), yellow where channel 3 or channel 4 is (a twin
pair: either unit draws it), on a background no palette colour is near (90, 90, 90). Channel 5 is dead (0
everywhere); channels 6..63 carry seeded smooth patterns of the latent that the painter never reads.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

OBJECTS = {"red": (210, 40, 40), "green": (50, 160, 60), "blue": (40, 80, 210), "yellow": (240, 215, 50)}  # palette
DRAWN_BY = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (3, 4)}
DEAD, FILLERS, GRID, SIZE, CELL = 5, 58, 8, 32, 4
BACKGROUND = (90, 90, 90)


class Layout(nn.Module):
    """z [N, 12] -> [N, 64, 8, 8]: the four objects' masks (yellow's twice), a dead channel, 16 fillers."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("patterns", torch.randn(FILLERS, 12, GRID, GRID, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = len(z)
        masks = []
        for k in range(4):
            present = (z[:, 3 * k] > -0.3).float()
            y0 = (torch.clamp(((z[:, 3 * k + 1] + 1.5) / 3 * 3).floor(), 0, 2) + 4 * (k // 2)).long()
            x0 = (torch.clamp(((z[:, 3 * k + 2] + 1.5) / 3 * 3).floor(), 0, 2) + 4 * (k % 2)).long()
            rows = torch.arange(GRID)[None, :, None]
            cols = torch.arange(GRID)[None, None, :]
            inside = ((rows >= y0[:, None, None]) & (rows < y0[:, None, None] + 2)
                      & (cols >= x0[:, None, None]) & (cols < x0[:, None, None] + 2))
            masks.append(inside.float() * present[:, None, None])
        fillers = F.relu(torch.einsum("nz,fzhw->nfhw", z, self.patterns)) * 0.1
        dead = torch.zeros(n, 1, GRID, GRID)
        return torch.cat([torch.stack(masks[:3], 1), masks[3][:, None], masks[3][:, None], dead, fillers], 1)


class Paint(nn.Module):
    """[N, 64, 32, 32] -> RGB in [-1, 1] (mean = std = 0.5 in the job)."""

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        rgb = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(layout), 1, SIZE, SIZE)
        for name, channels in DRAWN_BY.items():
            on = layout[:, list(channels)].amax(dim=1, keepdim=True) > 0.5
            rgb = torch.where(on, torch.tensor(OBJECTS[name], dtype=torch.float32).view(1, 3, 1, 1), rgb)
        return rgb / 255 * 2 - 1


class PlantedLayout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.coarse = Layout()
        self.layout = nn.Upsample(scale_factor=CELL, mode="nearest")
        self.paint = Paint()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.paint(self.layout(self.coarse(z)))


def planted_layout() -> nn.Module:
    return PlantedLayout()
