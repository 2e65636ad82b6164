"""The site's images: example crops with their heat map laid over, feature visualizations, contact sheets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 88


def overlay(crops: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 [..., P, P, 3]: each crop with its heat map (0-255) blended in, warm where it is high."""
    h = heat.astype(np.float32)[..., None] / 255.0
    warm = np.stack([np.full_like(h[..., 0], 255.0), 255.0 * h[..., 0], np.zeros_like(h[..., 0])], axis=-1)
    alpha = 0.55 * h
    return (crops.astype(np.float32) * (1 - alpha) + warm * alpha).round().astype(np.uint8)


def jet_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3]: the image half-covered by the heat map (0-255) in the jet colours Grad-CAM is shown in (blue
    low, red high), visible on an image of any colour."""
    h = heat.astype(np.float32)[..., None] / 255.0
    jet = np.concatenate([np.clip(1.5 - np.abs(4 * h - k), 0, 1) for k in (3, 2, 1)], axis=-1) * 255.0
    return (0.5 * image.astype(np.float32) + 0.5 * jet).round().astype(np.uint8)


def strip(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """uint8 [n, P, P, 3] laid out in a grid of `columns` (default: one row), white gaps."""
    n, p = images.shape[0], images.shape[1]
    columns = columns or n
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (p + gap) - gap, columns * (p + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[r * (p + gap):r * (p + gap) + p, c * (p + gap):c * (p + gap) + p] = images[i]
    return sheet


def save(image: np.ndarray, path: Path) -> None:
    """JPEG for photos (example crops), PNG for the rest, by the file's suffix."""
    img = Image.fromarray(image)
    if path.suffix == ".jpg":
        img.save(path, quality=JPEG_QUALITY)
    else:
        img.save(path, optimize=False)


def unit_pictures(crops: np.ndarray, heat: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """One unit's pictures: 'card' (its top 4 in a 2x2 grid), 'top' and 'bottom' (k each, one row)."""
    laid = overlay(crops, heat)
    return {"card": strip(laid[:min(4, k)], columns=2), "top": strip(laid[:k]), "bottom": strip(laid[k:2 * k])}


def contact_sheet(tiles: np.ndarray, labels_per_row: int | None = None) -> np.ndarray:
    """uint8 [units, S, S, 3] as a near-square grid, one tile per unit in unit order."""
    columns = labels_per_row or max(1, math.ceil(math.sqrt(len(tiles))))
    return strip(tiles, columns=columns, gap=1)


def enlarge(image: np.ndarray, size: int) -> np.ndarray:
    """A small image (a filter) repeated pixel by pixel to about `size` pixels a side."""
    factor = max(1, size // max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)
