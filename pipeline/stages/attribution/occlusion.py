"""Occlusion (Zeiler & Fergus 2014; Zhou et al. 2015's empirical receptive field): a square of the mean colour is slid
over an example and the drop of the unit's maximum is recorded where it covered; one forward pass per occluder
position serves every unit whose top example the image is. A unit's empirical receptive field is the mean of its
examples' maps, each cut to the theoretical field around the unit's maximum."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.featvis.projections import ProjectionRequest

VARIANTS_PER_PASS = 64


def occluder_positions(size: tuple[int, int], side: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners covering the whole image (the last row and column flush with the border)."""
    def starts(n: int) -> list[int]:
        last = max(n - side, 0)
        return sorted(set(list(range(0, last + 1, stride)) + [last]))
    return [(y, x) for y in starts(size[0]) for x in starts(size[1])]


def occlusion_maps(model: nn.Module, layers: list[LayerInfo], image: torch.Tensor, requests: list[ProjectionRequest],
                   side: int, stride: int) -> dict[ProjectionRequest, np.ndarray]:
    """float32 [H, W] per request on this image ([C, H, W], normalized: 0 is the mean colour): the unit's maximum
    minus its value with the pixel covered, averaged over the occluder positions that cover it."""
    h, w = image.shape[1:]
    positions = occluder_positions((h, w), side, stride)
    wanted = [info for info in layers if info.name in {r.layer for r in requests}]
    values = {r: [] for r in requests}
    base: dict[ProjectionRequest, float] = {}

    def read(batch: torch.Tensor) -> dict[ProjectionRequest, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        with tapped(model, wanted, lambda name, out: outputs.__setitem__(name, out)) as run:
            run(batch)
        return {r: outputs[r.layer][:, r.unit, r.y, r.x].float().cpu() for r in requests}

    with torch.inference_mode():
        base = {r: float(v[0]) for r, v in read(image[None]).items()}
        for start in range(0, len(positions), VARIANTS_PER_PASS):
            chunk = positions[start:start + VARIANTS_PER_PASS]
            batch = image[None].repeat(len(chunk), 1, 1, 1)
            for i, (y, x) in enumerate(chunk):
                batch[i, :, y:y + side, x:x + side] = 0
            for r, v in read(batch).items():
                values[r].append(v)
    cover = np.zeros((h, w), np.float32)
    for y, x in positions:
        cover[y:y + side, x:x + side] += 1
    out = {}
    for r in requests:
        drops = base[r] - torch.cat(values[r]).numpy()
        total = np.zeros((h, w), np.float32)
        for (y, x), d in zip(positions, drops):
            total[y:y + side, x:x + side] += d
        out[r] = total / np.maximum(cover, 1)
    return out


def field_window(discrepancy: np.ndarray, top_left: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The theoretical field's window [size] of a map (NaN where it lies outside the image)."""
    out = np.full(size, np.nan, np.float32)
    y0, x0 = top_left
    h, w = discrepancy.shape
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + size[0], h), min(x0 + size[1], w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = discrepancy[sy0:sy1, sx0:sx1]
    return out


def empirical_size(mean_window: np.ndarray) -> float:
    """The side in pixels of the square as large as the region where the mean drop is at least half its largest."""
    finite = np.nan_to_num(mean_window, nan=0.0)
    top = float(finite.max())
    return float(np.sqrt((finite >= 0.5 * top).sum())) if top > 0 else 0.0
