"""A tiny Broden-format directory with planted content, whose IoUs a test can compute by hand.

Images are `size` x `size` RGB on a 2-pixel grid (masks are size/2, each mask pixel one 2x2 block):
- red blocks: the object `redthing` (object mask plane), also the part `redpart` on a second
  plane of the `part` cell in odd images (so a part cell holds two planes);
- green background: the whole image except the colored blocks, in images of scene `greenland`
  (every other image); the others have a gray background and scene `grayland`;
- blue blocks: few, and in no label (an unrelated detector's pixels).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, GRAY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)
LABELS = [  # number, name, category
    (1, "redthing", "object"), (2, "wheel", "part"), (3, "redpart", "part"),
    (4, "greenland", "scene"), (5, "grayland", "scene"),
]
SYNONYMS = {"redthing": "scarlet blob;crimson thing", "greenland": "meadow"}  # label.csv `syns`


@dataclass
class MiniBroden:
    root: Path
    red: np.ndarray  # bool [N, s, s]: red mask pixels
    green: np.ndarray  # bool [N, s, s]: green mask pixels
    blue: np.ndarray  # bool [N, s, s]
    scene: np.ndarray  # int [N]: 4 or 5


def _png(path: Path, labels: np.ndarray) -> None:
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb).save(path)


def write_mini_broden(root: Path, images: int = 12, size: int = 32, seed: int = 0) -> MiniBroden:
    rng = np.random.default_rng(seed)
    s = size // 2
    (root / "images").mkdir(parents=True, exist_ok=True)
    reds, greens, blues, scenes, rows = [], [], [], [], []
    for i in range(images):
        red = np.zeros((s, s), bool)
        for _ in range(2):
            y, x, h, w = rng.integers(0, s - 4), rng.integers(0, s - 4), rng.integers(2, 5), rng.integers(2, 5)
            red[y:y + h, x:x + w] = True
        blue = np.zeros((s, s), bool)
        if i % 3 == 0:
            y, x = rng.integers(0, s - 1, size=2)
            blue[y, x] = True
        blue &= ~red
        scene = 4 if i % 2 == 0 else 5
        green = ~red & ~blue if scene == 4 else np.zeros((s, s), bool)
        pixels = np.zeros((s, s, 3), np.uint8)
        pixels[:] = GREEN if scene == 4 else GRAY
        pixels[red], pixels[blue] = RED, BLUE
        Image.fromarray(pixels.repeat(2, 0).repeat(2, 1)).save(root / "images" / f"{i:03d}.png")
        _png(root / "images" / f"{i:03d}_object.png", red.astype(np.int64) * 1)
        parts = f"{i:03d}_part_1.png"
        wheel = np.zeros((s, s), np.int64)
        wheel[:2, :2] = 2  # a part label in the corner: another label of the part category
        _png(root / "images" / f"{i:03d}_part_1.png", wheel)
        if i % 2:
            _png(root / "images" / f"{i:03d}_part_2.png", red.astype(np.int64) * 3)
            parts += f";{i:03d}_part_2.png"
        rows.append([f"{i:03d}.png", "train", size, size, s, s, f"{i:03d}_object.png", parts, str(scene)])
        reds.append(red), greens.append(green), blues.append(blue), scenes.append(scene)
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "object", "part", "scene"], rows)
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[n, name, f"{cat}({images})", images, 0.5, SYNONYMS.get(name, "")] for n, name, cat in LABELS])
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
         [["object", 1, 1, 1, images], ["part", 2, 3, 2, images], ["scene", 4, 5, 2, images]])
    for cat in ("object", "part", "scene"):
        _csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[k + 1, n, name, images, 0.5] for k, (n, name, c) in enumerate([l for l in LABELS if l[2] == cat])])
    return MiniBroden(root, np.array(reds), np.array(greens), np.array(blues), np.array(scenes))


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
