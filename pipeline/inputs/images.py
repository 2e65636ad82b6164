"""The image data set: listing an ImageFolder or a flat folder, decoding any image Pillow reads.

Image ids are positions in the sorted list of relative paths, so they do not
depend on how the set is later cut into shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
            if i % step == 0 and full.is_file():  # a folder named like an image has no bytes (it is a skip)
                try:
                    h.update(hashlib.sha256(full.read_bytes()).digest())
                except OSError as exc:  # unreadable (permissions): a skip too, hashed as such
                    h.update(f"unreadable: {exc.errno}".encode())
        return h.hexdigest()


class SkippedImage(Exception):
    """This file cannot be used as an image; the message says why."""


def list_images(root: Path, limit: int = 0, seed: int = 0) -> ImageSet:
    """All non-hidden files under `root`: class sub-folders make an ImageFolder, else a flat folder.

    A folder named like an image file (`x.png/`) is not a class: it is listed as a file, so that
    decoding it becomes a recorded skip. Image files beside class sub-folders are refused (an
    ImageFolder would leave them out without a word); other loose files (a README) are ignored.
    """
    if not root.is_dir():
        raise UserError(f"data.images {root} is not a directory: point it at an ImageFolder or a folder of images.")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not _image_name(d.name))
    entries: list[tuple[str, str | None]] = []
    if subdirs:
        loose = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in subdirs and _image_name(p.name))
        if loose:
            raise UserError(
                f"data.images {root} holds class sub-folders ({', '.join(subdirs[:3])}{', ...' if len(subdirs) > 3 else ''}) "
                f"and {len(loose)} image file(s) beside them ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}), "
                "which belong to no class and would be left out. Move them into a class folder, or move the "
                "sub-folders out to use it as a flat folder of images.")
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


def _image_name(name: str) -> bool:
    """Whether a file name has an extension Pillow registers for an image format."""
    return os.path.splitext(name)[1].lower() in Image.registered_extensions()


def _files_under(folder: Path) -> list[Path]:
    """Non-hidden files under `folder`, and folders named like image files (not descended into)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        found.extend(Path(dirpath) / d for d in dirnames if not d.startswith(".") and _image_name(d))
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _image_name(d)]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return found


def load_image(path: Path, size: int, channels: int = 3, crop: bool = True) -> np.ndarray:
    """Decode, orient, convert to RGB (or gray), resize: uint8 [size, size, channels].

    With `crop` the short side becomes `size` and the center is cut out; without it the whole
    image is squeezed to size x size (concept images, whose masks cover the whole image).
    Raises SkippedImage (a reason without the file's directory) for anything that is not a
    decodable image within Pillow's pixel limit.
    """
    try:
        with open_image(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            img = _to_8bit(img)
            img = img.convert("L" if channels == 1 else "RGB")
    except SkippedImage:
        raise
    except Exception as exc:  # corrupt, truncated, not an image, decompression bomb found while decoding
        raise SkippedImage(failure_reason(exc, path)) from None
    if img.size != (size, size):  # already the input size: resizing and cropping would change nothing
        import torchvision.transforms.functional as TF  # here: importing torchvision costs every process 1.3 s (torch._dynamo)

        bilinear = TF.InterpolationMode.BILINEAR
        if crop:
            img = TF.center_crop(TF.resize(img, size, interpolation=bilinear, antialias=True), [size, size])
        else:
            img = TF.resize(img, [size, size], interpolation=bilinear, antialias=True)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


@contextlib.contextmanager
def open_image(path: Path, formats: tuple[str, ...] | None = None) -> Iterator[Image.Image]:
    """`Image.open` (lazy: no pixel decoded) that raises SkippedImage for a folder, an empty file, or a
    header declaring more pixels than Pillow's limit `PIL.Image.MAX_IMAGE_PIXELS`. `formats`: the only
    formats tried (Pillow's names, e.g. ("PNG",)); None tries every format Pillow knows.

    The limit is the one Pillow warns at (it raises only past twice that); honouring it here makes the
    outcome the same whether or not warnings are errors. `MAX_IMAGE_PIXELS = None` lifts it, as in Pillow.
    """
    found = os.stat(path)  # one system call for both checks
    if stat.S_ISDIR(found.st_mode):
        raise SkippedImage("a folder, not an image file")
    if found.st_size == 0:
        raise SkippedImage("an empty file (0 bytes), not an image")
    with open(path, "rb") as fp:
        try:
            img = Image.open(fp, formats=formats)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SkippedImage(failure_reason(exc, path)) from None
        with img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise SkippedImage(_too_many_pixels(img.width * img.height, f"{img.width}x{img.height} = "))
            yield img


def failure_reason(exc: BaseException, path: Path) -> str:
    """Why `path` could not be decoded, in one line that names no folder (catalogs store relative paths)."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return _too_many_pixels(int(found.group(1)) if found else 0, "")
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist"
    if isinstance(exc, PermissionError):
        return "permission denied: the file cannot be read"
    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image, or a format Pillow cannot read"
    text = next((line for line in str(exc).splitlines() if line.strip()), "")
    for where in (str(path), str(path.parent)):
        text = text.replace(where, path.name)
    if "truncated" in text.lower() or isinstance(exc, (EOFError, SyntaxError)):
        return f"truncated or corrupt ({type(exc).__name__}: {text or 'no detail'})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _too_many_pixels(pixels: int, shape: str) -> str:
    declared = f"{shape}{pixels:,} pixels" if pixels else "more pixels than allowed"
    return (f"its header declares {declared}, more than Pillow's decompression-bomb limit "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}, so it was not decoded (it could exhaust "
            "memory). Downscale the file, or, if you trust it, raise PIL.Image.MAX_IMAGE_PIXELS in every process "
            "that decodes images (the Ray workers too, e.g. from a sitecustomize.py)")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images scaled to 8 bits (Pillow's own convert clips them to white).

    16-bit modes span 0..65535. 32-bit integer (I) and float (F) images have no fixed range: values
    within 0..255 are kept, integers within 0..65535 (a 16-bit PNG) and floats within 0..1 are
    scaled from that range, anything else is stretched from its minimum to its maximum. NaN and
    infinite values read as 0.
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)
        low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if img.mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        elif img.mode == "F" and low >= 0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif low >= 0 and high <= 255.0:
            low, high = 0.0, 255.0
        elif img.mode == "I" and low >= 0 and high <= 65535.0:
            low, high = 0.0, 65535.0
        scaled = (arr - low) / max(high - low, 1e-12) * 255.0 + 0.5
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA")
    return img


def to_model_input(batch: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [N, H, W, C] -> normalized float [N, C, H, W], contiguous: a channels-last view would make the
    model's convolutions take other kernels (slower on CPU, and other rounding than a plain NCHW batch)."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
