"""Receptive-field crops of the top and bottom examples (and of the spectrum's), with the unit's activation heat
map over each.

Runs after the activations stage has chosen the examples: the few images
involved are run through the model again and each example is cut out of
exactly the pixels the model saw.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo


@dataclass(frozen=True)
class CropRequest:
    """One example slot to fill: `slot` is the rank for top examples, k + rank for bottom ones and 2k + rank for
    the activation spectrum's."""

    layer: str
    unit: int
    slot: int
    image_id: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in input pixels, half-open
    scale: float  # the activation shown as full heat (the unit's max for top, min for bottom)


@dataclass
class CropBatch:
    """Filled slots of one layer: index arrays and the pixels for them."""

    unit: np.ndarray  # int [M]
    slot: np.ndarray  # int [M]
    crops: np.ndarray  # uint8 [M, P, P, C]
    heat: np.ndarray  # uint8 [M, P, P]


def cut_examples(model: nn.Module, layers: list[LayerInfo], batches: Iterable[Batch],
           requests: list[CropRequest], patch: int) -> dict[str, CropBatch]:
    """Crops and heat maps for every request whose image appears in `batches`."""
    by_image: dict[int, list[CropRequest]] = defaultdict(list)
    for req in requests:
        by_image[req.image_id].append(req)
    outputs: dict[str, torch.Tensor] = {}
    filled: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]] = defaultdict(list)
    with tapped(model, layers, lambda name, out: outputs.__setitem__(name, out.detach().float().cpu().clone())) as run:
        with torch.inference_mode():
            for batch in batches:
                run(batch.inputs)
                for row, image_id in enumerate(batch.image_ids.tolist()):
                    image = torch.from_numpy(batch.pixels[row]).permute(2, 0, 1).float()
                    for req in by_image.get(image_id, ()):
                        crop, heat = _crop_one(image, outputs[req.layer][row, req.unit], req, patch)
                        filled[req.layer].append((req.unit, req.slot, crop, heat))
    return {
        layer: CropBatch(np.array([f[0] for f in rows]), np.array([f[1] for f in rows]),
                         np.stack([f[2] for f in rows]), np.stack([f[3] for f in rows]))
        for layer, rows in filled.items()
    }


def _crop_one(image: torch.Tensor, unit_map: torch.Tensor, req: CropRequest, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the box from the image and from the map stretched over the image, both resized to patch x patch."""
    _, h, w = image.shape
    y0, x0, y1, x1 = req.box
    full = F.interpolate(unit_map.reshape(1, 1, *unit_map.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False)
    heat = full[:, :, y0:y1, x0:x1]
    crop = image[None, :, y0:y1, x0:x1]
    crop, heat = resize_region(crop, patch), resize_region(heat, patch)
    scale = req.scale if req.scale not in (0.0,) and np.isfinite(req.scale) else 1.0
    heat = (heat / scale).clamp(0, 1) * 255.0
    crop_u8 = crop[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    heat_u8 = heat[0, 0].round().to(torch.uint8).numpy()
    return crop_u8, heat_u8


def resize_region(region: torch.Tensor, patch: int) -> torch.Tensor:
    """Shrink with antialiasing; enlarge small fields by repeating pixels, so the pixels the unit saw stay visible."""
    if max(region.shape[-2:]) <= patch:
        return F.interpolate(region, size=(patch, patch), mode="nearest-exact")
    return F.interpolate(region, size=(patch, patch), mode="bilinear", align_corners=False, antialias=True)
