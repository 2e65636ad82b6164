"""Concept images (Broden) turned into model-ready batches with their masks, decoded ahead on a thread.

Like `batches.py`, but each image comes with its concept masks and image-level labels, and the
image is squeezed to the model's input size without cropping so the masks still cover it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.inputs.batches import Preprocess, model_inputs
from pipeline.inputs.broden import Broden, ConceptImage, load_masks
from pipeline.inputs.images import SkippedImage, load_image


@dataclass
class ConceptBatch:
    inputs: torch.Tensor  # float [N, C, H, W]
    image_ids: np.ndarray  # int64 [N], positions in broden.images
    masks: list[dict[str, np.ndarray]]  # per image: category -> int32 [planes, sh, sw]
    labels: list[dict[str, tuple[int, ...]]]  # per image: category -> image-level label numbers
    mask_sizes: list[tuple[int, int]]  # per image: (sh, sw) from index.csv


def iter_concept_batches(broden: Broden, ids: Sequence[int], prep: Preprocess,
                         skipped: list[tuple[int, str]], device: str = "cpu",
                         with_masks: bool = True) -> Iterator[ConceptBatch]:
    """Batches of `prep.batch_size` consecutive ids; unusable images are appended to `skipped`.
    Without `with_masks` (the threshold passes), masks are not decoded: batch.masks holds empty dicts, and an
    image whose masks are unreadable is used (the tally, which reads them, skips it: see `stage.py`).

    Shards hold whole global batches (ids `b * batch_size` onwards), so an image always meets the
    same batch companions, whatever the sharding: CPU convolutions are not batch-invariant.
    """
    groups = [list(ids[s:s + prep.batch_size]) for s in range(0, len(ids), prep.batch_size)]

    def decode(group: list[int]):
        kept, pixels, masks, labels, sizes, bad, names = [], [], [], [], [], [], []
        for i in group:
            image: ConceptImage = broden.images[i]
            try:
                pixels.append(load_image(broden.root / "images" / image.image, prep.input_size, prep.channels, crop=False))
                masks.append(load_masks(broden, image) if with_masks else {})
            except SkippedImage as exc:
                if len(pixels) > len(masks):
                    pixels.pop()
                bad.append((i, f"{image.image} (index.csv row {image.row}): {exc}"))
                continue
            kept.append(i)
            names.append(image.image)
            labels.append(image.labels)
            sizes.append(image.mask_size)
        return kept, pixels, masks, labels, sizes, bad, names

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, groups[0]) if groups else None
        for n in range(len(groups)):
            kept, pixels, masks, labels, sizes, bad, names = pending.result()
            pending = pool.submit(decode, groups[n + 1]) if n + 1 < len(groups) else None
            skipped.extend(bad)
            if kept:
                inputs = model_inputs(np.stack(pixels), names, prep, device)
                yield ConceptBatch(inputs, np.asarray(kept, dtype=np.int64), masks, labels, sizes)
