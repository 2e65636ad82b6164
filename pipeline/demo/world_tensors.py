"""The concept world as tensors for the demo generator and its segmenter: each image redrawn from the world's
recipe (world.json) at half its side (pixel (2i, 2j), the one its Broden masks describe), with its exact colour,
object and material maps; the "val" split (index % 5 == 4) held out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.concepts.vocabulary import CATEGORY_LABELS
from pipeline.concepts.world import draw_image
from pipeline.demo.train import read_world

CATEGORIES = ("color", "object", "material")  # the segmenter's heads, one plane each


@dataclass(frozen=True)
class WorldTensors:
    images: torch.Tensor  # float [N, 3, S, S] in [-1, 1] (mean = std = 0.5)
    maps: torch.Tensor  # int64 [N, 3, S, S]: per category of CATEGORIES, 1-based index into its labels (0: none)
    held: torch.Tensor  # bool [N]: the val split

    @property
    def recipe(self) -> dict:
        return {"images": len(self.held), "side": int(self.images.shape[-1])}


def segmenter_labels() -> list[tuple[str, str]]:
    """(concept, category) of the segmenter's label numbers 1..L: every colour, object and material."""
    return [(name, cat) for cat in CATEGORIES for name in CATEGORY_LABELS[cat]]


def world_tensors(world: Path) -> tuple[WorldTensors, dict]:
    """The world's images and maps, and its world.json (part of the training recipes' fingerprints)."""
    doc = read_world(world)
    pixels, maps = [], []
    for index in range(doc["images"]):
        drawing = draw_image(index, doc["size"], doc["seed"])
        pixels.append(drawing.rgb[::2, ::2])
        maps.append(np.stack([drawing.maps[cat][::2, ::2] for cat in CATEGORIES]))
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    held = torch.tensor([i % 5 == 4 for i in range(doc["images"])])
    return WorldTensors(images, torch.from_numpy(np.stack(maps).astype(np.int64)), held), doc
