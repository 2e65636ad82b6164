"""Concept labels in the form the dissection tally consumes: the label space, and a batch's masks
encoded once per batch (shared by every layer).

A label belongs to one category (`LabelSpace`, its primary category). Two counting rules (`UNIONS`):

- "netdissect-lite" (the default), as NetDissect-Lite's `tally_job`: a label counts wherever it is
  found, in any category's planes or image-level cells; a pixel carrying it in two planes counts
  twice, in its area and in its intersections; an image-level label covers the whole image (sh*sw).
- "image" (the rule of earlier versions): a label is looked up only in its own category's masks and
  image-level labels; a pixel counts once per label; an image-level label subsumes its own pixels.

The union's category term differs too: see `tally.compute_tally`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """The concept labels: sorted label numbers, each with one category and a name."""

    numbers: np.ndarray  # int64 [L], ascending, > 0
    category: np.ndarray  # int64 [L], index into category_names
    category_names: tuple[str, ...]
    names: tuple[str, ...]  # [L] concept names

    @classmethod
    def from_labels(cls, numbers: Sequence[int] | np.ndarray, categories_of_numbers: Sequence[int | str] | np.ndarray,
                    category_names: Sequence[str], names: Sequence[str] | None = None) -> LabelSpace:
        """Labels in any order; a category may be given by index or by name. Names default to str(number)."""
        cats = tuple(category_names)
        nums = np.asarray(numbers, dtype=np.int64).reshape(-1)
        raw = list(categories_of_numbers)
        cat = np.array([cats.index(c) if isinstance(c, str) else int(c) for c in raw], dtype=np.int64)
        labels = [str(n) for n in nums] if names is None else list(names)
        if not len(nums) == len(cat) == len(labels):
            raise ValueError(f"{len(nums)} numbers, {len(cat)} categories and {len(labels)} names: lengths differ")
        if len(nums) and (nums.min() <= 0 or np.unique(nums).size != nums.size):
            raise ValueError("label numbers must be positive and unique (0 means unlabeled)")
        if len(cat) and (cat.min() < 0 or cat.max() >= len(cats)):
            raise ValueError(f"category index out of range for {len(cats)} categories")
        order = np.argsort(nums, kind="stable")
        return cls(nums[order], cat[order], cats, tuple(labels[i] for i in order))

    @property
    def size(self) -> int:
        return len(self.numbers)

    @cached_property
    def lut(self) -> np.ndarray:
        """int32 [C, max_number + 2]: label number -> label index if the label is of category c, else -1."""
        top = int(self.numbers.max()) if self.size else 0
        table = np.full((len(self.category_names), top + 2), -1, dtype=np.int32)
        table[self.category, self.numbers] = np.arange(self.size)
        return table

    def indices(self, category: int, values: np.ndarray) -> np.ndarray:
        """Label indices (-1: none, unknown or another category's) of label numbers found in `category`."""
        return np.take(self.lut[category], values, mode="clip")  # 0, negative or too large: -1


UNIONS = ("netdissect-lite", "image")


@dataclass(frozen=True)
class EncodedMasks:
    """A batch's concept labels as the tally reads them: per pixel and plane, a label index."""

    size: tuple[int, int]
    pixel: np.ndarray  # int64 [n, S, P]: label index + 1 per pixel and plane (0: none)
    image_level: np.ndarray  # float64 [n, L]: image-level occurrences of each label
    has_cat: np.ndarray  # float64 0/1 [n, C]: "image": the image carries a label of the category; else image-level only
    label_area: np.ndarray  # int64 [L]: label pixels (image-level labels: sh*sw per image)
    union: str = "netdissect-lite"


def encode_masks(masks: Sequence[Mapping[str, np.ndarray]], labels: Sequence[Mapping[str, Sequence[int]]],
                 space: LabelSpace, size: tuple[int, int], union: str = "netdissect-lite") -> EncodedMasks:
    """Per image, category -> int32 [planes, sh, sw] label numbers (0: none) and category -> image-level
    numbers, counted by the `union` rule (see the module docstring)."""
    if union not in UNIONS:
        raise ValueError(f"union must be one of {UNIONS}, not {union!r}")
    if union == "netdissect-lite":
        return _encode_as_netdissect(masks, labels, space, size)
    n, s, ncat = len(masks), size[0] * size[1], len(space.category_names)
    image_level = np.zeros((n, space.size), bool)
    triples = [(i, c, number) for i, per_image in enumerate(labels) for c, name in enumerate(space.category_names)
               for number in per_image.get(name, ())]
    if triples:
        img, cat, number = np.array(triples, dtype=np.int64).T
        idx = space.lut[cat, np.clip(number, 0, space.lut.shape[1] - 1)]
        image_level[img[idx >= 0], idx[idx >= 0]] = True
    has_cat = np.zeros((n, ncat), bool)
    for c in range(ncat):
        has_cat[:, c] = image_level[:, space.category == c].any(axis=1)
    area = image_level.sum(axis=0).astype(np.int64) * s
    found = {name: [(i, _planes(m[name], size, f"image {i}: {name} mask")) for i, m in enumerate(masks)
                    if m.get(name) is not None and np.size(m[name])] for name in space.category_names}
    depth = {name: max((len(p) for _, p in f), default=0) for name, f in found.items()}
    pixel = np.zeros((n, s, sum(depth.values())), np.int64)  # planes last: the tally reads a pixel's labels at once
    start = 0
    for c, name in enumerate(space.category_names):
        if not found[name]:
            continue
        lut = space.lut[c].astype(np.int64) + 1
        idx = pixel[:, :, start:start + depth[name]]
        start += depth[name]
        for i, planes in found[name]:
            if planes.min() < 0 or planes.max() >= len(lut):
                planes = np.clip(planes, 0, len(lut) - 1)  # 0, negative or too large numbers: none
            mapped = lut[planes]
            idx[i, :, :len(planes)] = mapped.T
            has_cat[i, c] |= mapped.max() > 0
        for q in range(1, idx.shape[2]):  # a label in an earlier plane at the same pixel: count it once
            idx[:, :, q][(idx[:, :, q:q + 1] == idx[:, :, :q]).any(axis=2)] = 0
        if image_level[:, space.category == c].any():  # an image-level label covers the whole image already
            covered = np.concatenate([np.zeros((n, 1), bool), image_level], axis=1)  # column 0: no label
            idx[covered[np.arange(n)[:, None, None], idx]] = 0
    area += np.bincount(pixel.reshape(-1), minlength=space.size + 1)[1:]
    return EncodedMasks(tuple(size), pixel, image_level.astype(np.float64), has_cat.astype(np.float64), area, union)


def _encode_as_netdissect(masks: Sequence[Mapping[str, np.ndarray]], labels: Sequence[Mapping[str, Sequence[int]]],
                          space: LabelSpace, size: tuple[int, int]) -> EncodedMasks:
    """Every plane of every category, as found; image-level numbers of every column, each occurrence."""
    n, s = len(masks), size[0] * size[1]
    top = int(space.numbers.max()) if space.size else 0
    lut = np.zeros(top + 2, np.int64)  # label number -> index + 1, whatever its category (0: none or unknown)
    lut[space.numbers] = np.arange(1, space.size + 1)
    image_level = np.zeros((n, space.size))
    for i, per_image in enumerate(labels):
        for numbers in per_image.values():
            for number in numbers:
                if 0 < number <= top and lut[number]:
                    image_level[i, lut[number] - 1] += 1
    found = [[_planes(m[name], size, f"image {i}: {name} mask") for name in space.category_names
              if m.get(name) is not None and np.size(m[name])] for i, m in enumerate(masks)]
    depth = max((sum(len(p) for p in per_image) for per_image in found), default=0)
    pixel = np.zeros((n, s, depth), np.int64)
    for i, per_image in enumerate(found):
        if per_image:
            planes = np.concatenate(per_image)
            pixel[i, :, :len(planes)] = lut[np.clip(planes, 0, top + 1)].T  # 0, negative or too large: none
    has_cat = np.zeros((n, len(space.category_names)))
    hit = image_level > 0
    for c in range(len(space.category_names)):
        has_cat[:, c] = hit[:, space.category == c].any(axis=1)
    area = (image_level.sum(axis=0) * s).astype(np.int64) + np.bincount(pixel.reshape(-1), minlength=space.size + 1)[1:]
    return EncodedMasks(tuple(size), pixel, image_level, has_cat, area, "netdissect-lite")


def _planes(mask: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """[planes, sh*sw] view of a [sh, sw] or [planes, sh, sw] mask."""
    mask = np.asarray(mask)
    if mask.shape[-2:] != tuple(size):
        raise ValueError(f"{what} of shape {mask.shape[-2:]}, expected {tuple(size)}")
    return mask.reshape(-1, size[0] * size[1])
