"""The image data set: listing an ImageFolder or a flat folder, decoding any image Pillow reads.

Image ids are positions in the sorted list of relative paths, so they do not
depend on how the set is later cut into shards.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

from pipeline.errors import UserError


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str  # relative to the data root, with '/' separators
    label: str | None  # class sub-folder name; None for a flat folder
    label_index: int  # position of `label` in the sorted class names; -1 for a flat folder


@dataclass(frozen=True)
class ImageSet:
    root: Path
    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]

    def fingerprint(self, sample: int = 64) -> str:
        """Hash of every (path, size) and of the full bytes of an evenly spaced sample of files."""
        h = hashlib.sha256()
        step = max(1, len(self.records) // sample)
        for i, rec in enumerate(self.records):
            full = self.root / rec.path
            h.update(f"{rec.path}\0{rec.label}\0{full.stat().st_size}\n".encode())
            if i % step == 0:
                h.update(hashlib.sha256(full.read_bytes()).digest())
        return h.hexdigest()


class SkippedImage(Exception):
    """This file cannot be used as an image; the message says why."""


def list_images(root: Path, limit: int = 0, seed: int = 0) -> ImageSet:
    """All non-hidden files under `root`: class sub-folders make an ImageFolder, else a flat folder."""
    if not root.is_dir():
        raise UserError(f"data.images {root} is not a directory: point it at an ImageFolder or a folder of images.")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    entries: list[tuple[str, str | None]] = []
    if subdirs:
        for cls in subdirs:
            for path in _files_under(root / cls):
                entries.append((path.relative_to(root).as_posix(), cls))
    else:
        entries = [(p.relative_to(root).as_posix(), None) for p in _files_under(root)]
    entries.sort()
    if limit and limit < len(entries):
        keep = np.sort(np.random.default_rng(seed).choice(len(entries), size=limit, replace=False))
        entries = [entries[i] for i in keep]
    if not entries:
        raise UserError(f"data.images {root} holds no files: add images (class sub-folders or a flat folder).")
    index = {c: i for i, c in enumerate(subdirs)}
    records = tuple(ImageRecord(i, p, c, index.get(c, -1)) for i, (p, c) in enumerate(entries))
    return ImageSet(root, records, tuple(subdirs))


def _files_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return found


def load_image(path: Path, size: int, channels: int = 3, crop: bool = True) -> np.ndarray:
    """Decode, orient, convert to RGB (or gray), resize: uint8 [size, size, channels].

    With `crop` the short side becomes `size` and the center is cut out; without it the whole
    image is squeezed to size x size (concept images, whose masks cover the whole image).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            img = _to_8bit(img)
            img = img.convert("L" if channels == 1 else "RGB")
    except Exception as exc:  # corrupt, truncated, empty, not an image, decompression bomb
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SkippedImage(f"{type(exc).__name__}: {reason}") from None
    bilinear = TF.InterpolationMode.BILINEAR
    if crop:
        img = TF.center_crop(TF.resize(img, size, interpolation=bilinear, antialias=True), [size, size])
    else:
        img = TF.resize(img, [size, size], interpolation=bilinear, antialias=True)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images scaled to 8 bits (Pillow's own convert would clip them to white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255) else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA")
    return img


def to_model_input(batch: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [N, H, W, C] -> normalized float [N, C, H, W]."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
