"""Turning image records into model-ready batches, decoding ahead on a thread while the model runs.

Batches are fixed by image id (`image_id // batch_size`), never by shard: the
model sees the same batch companions for every image however the data set is
sharded, so results are bit-identical across shard counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.generators.latents import latent_inputs
from pipeline.inputs.images import ImageRecord, SkippedImage, load_image, to_model_input


@dataclass(frozen=True)
class Preprocess:
    """How raw files become model input."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    latents: str = ""  # a generator's: the sample's latents file, its inputs (the images are its outputs)

    @property
    def channels(self) -> int:
        return len(self.mean)


@dataclass
class Batch:
    pixels: np.ndarray  # uint8 [N, H, W, C], what the model saw before normalization
    inputs: torch.Tensor  # float [N, C, H, W]
    image_ids: np.ndarray  # int64 [N]


def global_batches(records: Sequence[ImageRecord], batch_size: int) -> list[list[ImageRecord]]:
    """Group records (sorted by id) by their global batch number."""
    return [list(g) for _, g in itertools.groupby(records, key=lambda r: r.image_id // batch_size)]


def iter_batches(root: Path, groups: Sequence[Sequence[ImageRecord]], prep: Preprocess,
                 skipped: list[tuple[int, str]], device: str = "cpu") -> Iterator[Batch]:
    """One decoded batch per group; files that cannot be decoded are appended to `skipped` as (image_id, reason)."""

    def decode(group: Sequence[ImageRecord]) -> tuple[list[int], list[np.ndarray], list[tuple[int, str]], list[str]]:
        ids, arrays, bad, names = [], [], [], []
        for rec in group:
            try:
                arrays.append(load_image(root / rec.path, prep.input_size, prep.channels))
                ids.append(rec.image_id)
                names.append(rec.path)
            except SkippedImage as exc:
                bad.append((rec.image_id, str(exc)))
        return ids, arrays, bad, names

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, groups[0]) if groups else None
        for i in range(len(groups)):
            ids, arrays, bad, names = pending.result()
            pending = pool.submit(decode, groups[i + 1]) if i + 1 < len(groups) else None
            skipped.extend(bad)
            if not ids:
                continue
            pixels = np.stack(arrays)
            yield Batch(pixels, model_inputs(pixels, names, prep, device), np.asarray(ids, dtype=np.int64))


def model_inputs(pixels: np.ndarray, names: list[str], prep: Preprocess, device: str) -> torch.Tensor:
    """What the model reads for these images: the normalized pixels, or a generator's latents that made them."""
    if prep.latents:
        return latent_inputs(prep.latents, names, device)
    return to_model_input(pixels, prep.mean, prep.std).to(device)
