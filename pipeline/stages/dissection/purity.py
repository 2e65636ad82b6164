"""Top-example purity: the share of a unit's top images on the concept data set that carry its concept.

IoU says how well a unit's thresholded map overlaps a concept; purity says what a user sees on its page: of the
PURITY_TOP images where the unit peaks highest, how many hold its label anywhere (a pixel of it, or the
image-level label). Kept during the tally pass as each unit's top images (ties: the smaller image id) and, for
the images held, which labels they carry; merged across shards exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.stages.activations.ranked import PAD_ID, Ranked, batch_ranked
from pipeline.stages.dissection.concept_masks import LabelSpace

PURITY_TOP = 10  # NetDissect shows a unit's top 10 images


@dataclass
class TopImages:
    """A layer's units' top images by peak activation, and the labels each image held carries (bool [L])."""

    ranked: Ranked
    present: dict[int, np.ndarray]  # image id -> packed bits of the label indices the image carries

    @classmethod
    def empty(cls, units: int) -> TopImages:
        return cls(Ranked.empty(units, PURITY_TOP, largest=True), {})

    def merged(self, other: TopImages) -> TopImages:
        ranked = self.ranked.merged(other.ranked, largest=True)
        held = set(ranked.image_id.ravel().tolist())
        return TopImages(ranked, {i: bits for part in (self.present, other.present) for i, bits in part.items()
                                  if i in held})


def batch_top(out: torch.Tensor, image_ids: np.ndarray, carries: Sequence[np.ndarray]) -> TopImages:
    """One batch's top images of each unit (`out` [N, U, H, W]) with the labels they carry (`carries`: per image,
    `packed_labels`)."""
    peak = out.detach().float().amax(dim=(2, 3))
    ranked = batch_ranked(peak, torch.zeros_like(peak, dtype=torch.int64), image_ids, PURITY_TOP, largest=True)
    rows = {int(i): r for r, i in enumerate(image_ids)}
    held = set(ranked.image_id.ravel().tolist()) - {PAD_ID}
    return TopImages(ranked, {i: carries[rows[i]] for i in held})


def packed_labels(masks: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[int]], space: LabelSpace) -> np.ndarray:
    """The labels an image carries, as packed bits (once per image, whatever the number of layers)."""
    return np.packbits(carried(masks, labels, space))


def carried(masks: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[int]], space: LabelSpace) -> np.ndarray:
    """bool [L]: the labels an image carries, in its pixel masks or as image-level labels."""
    numbers = [np.unique(planes) for planes in masks.values() if planes is not None and np.size(planes)]
    numbers += [np.asarray(list(found), np.int64) for found in labels.values()]
    found = np.concatenate(numbers) if numbers else np.zeros(0, np.int64)
    return np.isin(space.numbers, found)


def purity(top: TopImages, best: np.ndarray, space: LabelSpace) -> np.ndarray:
    """float32 [U]: for each unit's best label (index, -1: none), the share of its top images that carry it (NaN for
    a unit without a label or without images)."""
    out = np.full(len(best), np.nan, np.float32)
    for unit, label in enumerate(best):
        ids = [i for i in top.ranked.image_id[unit].tolist() if i != PAD_ID]
        if label >= 0 and ids:
            out[unit] = np.mean([np.unpackbits(top.present[i], count=space.size)[label] for i in ids])
    return out
