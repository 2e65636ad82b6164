"""The dissection stage: Network Dissection (Bau et al. 2017, NetDissect-Lite) as mergeable partials.

The second pass over the concept data set, a `compute` -> `merge` -> `finalize` triple (the first,
the thresholds, is in thresholds.py):

tally: per image, each unit's map upsampled to the mask size (bilinear, align_corners=False,
   as NetDissect-Lite's imresize mode 'F'; see `bilinear.py`) and binarized `> t`; counts of
   activated pixels on each label, of label pixels, and of activated pixels in images carrying a
   label of each category. Partials are int64 counts that merge by addition: results do not
   depend on sharding.

`finalize` turns a tally into IoU = I / (Ucat + A - I) and the per-unit rankings. The label
semantics (one category per label, planes, image-level labels) are in `concept_masks.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.stages.dissection.bilinear import Bilinear, upsample
from pipeline.stages.dissection.concept_masks import EncodedMasks, LabelSpace, encode_masks

__all__ = ["Bilinear", "LabelSpace", "EncodedMasks", "encode_masks", "upsample"]  # re-exported for callers

# ---------------------------------------------------------------- pass 2: tally


@dataclass
class TallyPartial:
    """Counts over some images (int64). I: activated pixels on each label; A: label pixels;
    Ucat: activated pixels in images carrying a label of each category; unit_area: all activated pixels."""

    intersection: np.ndarray  # [U, L]
    label_area: np.ndarray  # [L]
    unit_cat: np.ndarray  # [U, C]
    unit_area: np.ndarray  # [U]
    images: int = 0

    @classmethod
    def empty(cls, units: int, space: LabelSpace) -> TallyPartial:
        z = lambda *shape: np.zeros(shape, np.int64)  # noqa: E731
        return cls(z(units, space.size), z(space.size), z(units, len(space.category_names)), z(units))


def merge_tally(a: TallyPartial, b: TallyPartial) -> TallyPartial:
    """Sum of counts: associative and commutative, exactly."""
    return TallyPartial(a.intersection + b.intersection, a.label_area + b.label_area,
                        a.unit_cat + b.unit_cat, a.unit_area + b.unit_area, a.images + b.images)


def compute_tally(acts: torch.Tensor, thresholds: np.ndarray, masks_per_image: Sequence[Mapping[str, np.ndarray]],
                  image_labels_per_image: Sequence[Mapping[str, Sequence[int]]], label_space: LabelSpace, *,
                  mask_size: tuple[int, int] | None = None, resize: str = "cells", encoded: EncodedMasks | None = None,
                  chunk_elements: int = 1 << 23) -> TallyPartial:
    """Pass 2 over a batch: `acts` [N, U, h, w]; per image, category -> int32 [planes, sh, sw] label
    numbers (0: none) and category -> image-level label numbers (or `encoded`, the same already
    encoded by `encode_masks`, to share the work between layers).

    Only maps whose raw maximum comes near the threshold can be on anywhere (a bilinear value is a
    convex combination of four inputs; the margin covers rounding). `resize="cells"` evaluates
    `Bilinear` only in the cells with a corner near the threshold; `resize="torch"` upsamples those
    maps whole with `upsample` (F.interpolate). Maps go `chunk_elements // (sh*sw)` at a time.
    The activated pixels are looked up in the batch's label map [N, S, planes] and counted per
    (unit, label) with one bincount; image-level labels and Ucat are (units x images) @
    (images x labels / categories) products of the activated pixel counts.
    """
    n, units = acts.shape[:2]
    if len(masks_per_image) != n or len(image_labels_per_image) != n:
        raise ValueError(f"{n} images of activations, {len(masks_per_image)} of masks, "
                         f"{len(image_labels_per_image)} of labels")
    if resize not in ("cells", "torch"):
        raise ValueError(f"resize must be 'cells' or 'torch', not {resize!r}")
    if encoded is None:
        size = tuple(mask_size) if mask_size is not None else _mask_size(masks_per_image)
        encoded = encode_masks(masks_per_image, image_labels_per_image, label_space, size)
    size, s, nlab, dev = encoded.size, encoded.size[0] * encoded.size[1], label_space.size, acts.device
    planes = encoded.pixel.shape[2]
    pixel = torch.from_numpy(encoded.pixel).to(dev).view(n * s, planes)
    x = acts.detach().float()
    bilinear = Bilinear.build(tuple(x.shape[2:]), size, dev)
    thr = torch.tensor(np.asarray(thresholds, dtype=np.float32), device=dev)
    near = thr - thr.abs() * 1e-5
    img, unit = torch.nonzero(x.amax(dim=(2, 3)) > near, as_tuple=True)
    counts = torch.zeros(n, units, dtype=torch.int64, device=dev)
    both = torch.zeros(units * nlab, dtype=torch.int64, device=dev)
    step = max(1, chunk_elements // s)
    for start in range(0, len(img), step):
        im, un = img[start:start + step], unit[start:start + step]
        if resize == "cells":
            row, pos = bilinear.on_pixels(x[im, un], thr[un], near[un])
        else:
            row, pos = torch.nonzero(upsample(x[im, un], size).reshape(len(im), s) > thr[un][:, None], as_tuple=True)
        counts[im, un] = torch.bincount(row, minlength=len(im))
        if planes and nlab:
            labs = pixel.index_select(0, im.index_select(0, row) * s + pos)  # [activated pixels, planes], 0: none
            keys = torch.where(labs > 0, un.index_select(0, row)[:, None] * nlab + labs - 1, units * nlab)
            both += torch.bincount(keys.view(-1), minlength=units * nlab + 1)[:-1]  # the last bin: no label
    by_image = counts.cpu().numpy().T.astype(np.float64)  # [U, n]; float64 products are exact below 2^53
    exact = lambda a: np.rint(a).astype(np.int64)  # noqa: E731
    return TallyPartial(
        intersection=both.reshape(units, nlab).cpu().numpy() + exact(by_image @ encoded.image_level),
        label_area=encoded.label_area.copy(),
        unit_cat=exact(by_image @ encoded.has_cat),
        unit_area=exact(by_image.sum(axis=1)),
        images=n,
    )


def _mask_size(masks: Sequence[Mapping[str, np.ndarray]]) -> tuple[int, int]:
    for per_image in masks:
        for planes in per_image.values():
            if planes is not None and np.size(planes):
                return tuple(np.shape(planes)[-2:])
    raise ValueError("no pixel masks in this batch: pass mask_size=(sh, sw)")


# ---------------------------------------------------------------- finalize


@dataclass(frozen=True)
class DissectionResult:
    """`concepts`: columns of the dissection table (top `top` labels of every category per unit);
    `units`: the best label per unit (units-table columns); `iou`: float32 [U, L]."""

    concepts: dict[str, np.ndarray]
    units: dict[str, np.ndarray]
    iou: np.ndarray = field(repr=False)


def iou_matrix(tally: TallyPartial, space: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
    """(IoU float64 [U, L], union int64 [U, L]); IoU = I / (Ucat[u, cat(l)] + A[l] - I), 0 where the union is 0."""
    union = tally.unit_cat[:, space.category] + tally.label_area[None, :] - tally.intersection
    iou = np.divide(tally.intersection, union, out=np.zeros(union.shape), where=union > 0)
    return iou, union


def finalize(tally: TallyPartial, thresholds: np.ndarray, label_space: LabelSpace, top: int = 5,
             iou_threshold: float = 0.04, *, layer: str | None = None) -> DissectionResult:
    """Rankings by IoU, ties broken by label number; rows sorted by unit, category, rank.

    Every category's top `top` labels appear (IoU 0 included). A unit's best label is None when
    its best IoU is 0. `layer`, when given, adds a layer column to both tables.
    """
    space, units = label_space, tally.intersection.shape[0]
    iou, union = iou_matrix(tally, space)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    unit, cat, rank, lab = ([np.zeros(0, np.int64)] for _ in range(4))
    for c in range(len(space.category_names)):
        cols = np.flatnonzero(space.category == c)  # ascending label number
        keep = min(top, cols.size)
        order = np.argsort(-iou[:, cols], axis=1, kind="stable")[:, :keep]  # stable: ties by number
        unit.append(np.repeat(np.arange(units), keep)); cat.append(np.full(units * keep, c))
        rank.append(np.tile(np.arange(keep), units)); lab.append(cols[order].ravel())
    unit, cat, rank, lab = (np.concatenate(x).astype(np.int64) for x in (unit, cat, rank, lab))
    row = np.lexsort((rank, cat, unit))
    unit, cat, rank, lab = unit[row], cat[row], rank[row], lab[row]
    names = np.array([*space.names, None], dtype=object)  # index -1: no label
    cat_names = np.array([*space.category_names, None], dtype=object)
    concepts = {
        "unit": unit.astype(np.int32), "category": cat_names[cat], "rank": rank.astype(np.int32),
        "concept": names[lab], "concept_number": space.numbers[lab].astype(np.int32),
        "iou": iou[unit, lab].astype(np.float32), "intersection": tally.intersection[unit, lab],
        "union": union[unit, lab], "threshold": thresholds[unit],
    }
    best = iou.argmax(axis=1) if space.size else np.zeros(units, np.int64)  # first maximum: smallest number
    best_iou = iou[np.arange(units), best] if space.size else np.zeros(units)
    best = np.where(best_iou > 0, best, -1)
    best_units = {
        "unit": np.arange(units, dtype=np.int32),
        "label": names[best],
        "category": cat_names[np.append(space.category, -1)[best]],
        "iou": best_iou.astype(np.float32),
        "interpretable": (best_iou >= iou_threshold) & (best_iou > 0),
    }
    if layer is not None:
        concepts = {"layer": np.full(len(unit), layer, dtype=object), **concepts}
        best_units = {"layer": np.full(units, layer, dtype=object), **best_units}
    return DissectionResult(concepts, best_units, iou.astype(np.float32))
