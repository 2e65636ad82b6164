"""The dissection stage: Network Dissection (Bau et al. 2017, NetDissect-Lite) as mergeable partials.

Two passes over the concept data set, each a `compute` -> `merge` -> `finalize` triple:

1. thresholds: per unit, the value `t` such that a fraction `quantile` of all raw activations
   (every position of every image, not upsampled) lies above it: the m-th largest value,
   m = ceil(quantile * total_count). Exact: a partial keeps each unit's largest values (at most
   m; fewer when a floor from other shards proves the rest cannot matter).
2. tally: per image, each unit's map upsampled to the mask size (bilinear, align_corners=False,
   as NetDissect-Lite's imresize mode 'F'; see `bilinear.py`) and binarized `> t`; counts of
   activated pixels on each label, of label pixels, and of activated pixels in images carrying a
   label of each category. Partials are int64 counts that merge by addition: results do not
   depend on sharding.

`finalize` turns a tally into IoU = I / (Ucat + A - I) and the per-unit rankings. The label
semantics (one category per label, planes, image-level labels) are in `concept_masks.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.stages.dissection.bilinear import Bilinear, upsample
from pipeline.stages.dissection.concept_masks import EncodedMasks, LabelSpace, encode_masks

__all__ = ["Bilinear", "LabelSpace", "EncodedMasks", "encode_masks", "upsample"]  # re-exported for callers

# ---------------------------------------------------------------- pass 1: thresholds


def top_count(quantile: float, total_count: int) -> int:
    """m = ceil(quantile * total_count), at least 1 and at most total_count (rounding noise ignored)."""
    return int(min(max(total_count, 1), max(1, math.ceil(round(quantile * total_count, 6)))))


@dataclass
class ThresholdPartial:
    """Per unit, the largest values seen, in no particular order (-inf: no value): float32 [U, <= capacity].

    Memory: U * capacity float32, capacity = ceil(quantile * total_count); e.g. 512 units at 7x7
    over Broden's 63,305 images keep 512 * 15,510 values (32 MB); 64 units at 56x56, 254 MB.
    """

    top: np.ndarray
    count: int  # activations seen per unit
    capacity: int
    quantile: float

    @classmethod
    def empty(cls, units: int, quantile: float, total_count: int) -> ThresholdPartial:
        return cls(np.zeros((units, 0), np.float32), 0, top_count(quantile, total_count), quantile)


def _keep_top(values: np.ndarray, capacity: int) -> np.ndarray:
    """Each row's `capacity` largest values, unordered; columns that would only hold -inf are dropped.

    np.partition (introselect) is linear; torch.topk sorts, about 4x slower for a large `capacity`."""
    values = np.asarray(values, dtype=np.float32)
    finite = int(np.isfinite(values).sum(axis=1).max()) if values.size else 0  # pruned values are -inf
    keep = min(capacity, finite)
    if keep == values.shape[1]:
        return values
    return np.ascontiguousarray(np.partition(values, values.shape[1] - keep, axis=1)[:, values.shape[1] - keep:])


def _flat(acts: torch.Tensor) -> torch.Tensor:
    n, units = acts.shape[:2]
    return acts.detach().float().reshape(n, units, -1).transpose(0, 1).reshape(units, -1)


def _above(values: torch.Tensor, floor: np.ndarray | None) -> torch.Tensor:
    """`values` with entries at or below `floor` [U] set to -inf (unchanged without a floor)."""
    if floor is None:
        return values
    low = torch.tensor(np.asarray(floor, np.float32), device=values.device)[:, None]
    return values.masked_fill(values <= low, float("-inf"))


def compute_thresholds(acts: torch.Tensor, quantile: float, total_count: int,
                       floor: np.ndarray | None = None) -> ThresholdPartial:
    """Pass 1 over a batch `acts` [N, U, h, w]; `total_count` = images x h x w of the whole data set.

    `floor` [U] (optional): values at or below it are not kept. It must be at most the unit's final
    threshold, e.g. the `capacity`-th largest value of a merged partial of other images: such values
    can never be among the top m, so the result stays exact while the partials stay small.
    """
    flat = _flat(acts)
    partial = ThresholdPartial.empty(flat.shape[0], quantile, total_count)
    partial.top, partial.count = _keep_top(_above(flat, floor).cpu().numpy(), partial.capacity), flat.shape[1]
    return partial


def _values_above(x: torch.Tensor, floor: np.ndarray) -> np.ndarray:
    """float32 [U, most kept]: each unit's values of `x` [N, U, hw] above its floor, padded with -inf.
    Only maps whose maximum passes the floor are looked at."""
    units = x.shape[1]
    low = torch.tensor(np.asarray(floor, np.float32), device=x.device)
    img, unit = torch.nonzero(x.amax(dim=2) > low, as_tuple=True)
    maps = x[img, unit]
    keep = maps > low[unit][:, None]
    rows = unit.repeat_interleave(keep.sum(dim=1))  # the unit of each kept value, in map order
    vals = maps[keep]
    order = torch.argsort(rows, stable=True)
    rows, vals = rows[order], vals[order]
    counts = torch.bincount(rows, minlength=units)
    starts = torch.cumsum(counts, 0) - counts
    out = torch.full((units, int(counts.max()) if len(rows) else 0), float("-inf"), device=x.device)
    out[rows, torch.arange(len(rows), device=x.device) - starts[rows]] = vals
    return out.cpu().numpy()


class TopValues:
    """Pass 1 over many batches of one layer: values are buffered unsorted and the top `capacity`
    selected only when the buffer outgrows it; from then on, values at or below the selection's
    `capacity`-th largest (or an outside `floor`) are dropped as they arrive. Same result as merging
    `compute_thresholds` of every batch, without sorting the kept values once per batch."""

    def __init__(self, units: int, quantile: float, total_count: int, floor: np.ndarray | None = None):
        self.partial = ThresholdPartial.empty(units, quantile, total_count)
        self.floor, self.count, self.buffer, self.width = floor, 0, [], 0

    def add(self, acts: torch.Tensor) -> None:
        n, units = acts.shape[:2]
        x = acts.detach().float().reshape(n, units, -1)
        self.count += n * x.shape[2]
        floors = [f for f in (self.floor, pruning_floor(self.partial)) if f is not None]
        if floors:
            values = _values_above(x, np.maximum.reduce(floors))
        else:
            values = x.transpose(0, 1).reshape(units, -1).cpu().numpy()
        self.buffer.append(values)
        self.width += values.shape[1]
        if self.width > self.partial.capacity:
            self._select()

    def _select(self) -> None:
        if self.buffer:
            self.partial.top = _keep_top(np.concatenate([self.partial.top, *self.buffer], axis=1), self.partial.capacity)
            self.buffer, self.width = [], 0

    def result(self) -> ThresholdPartial:
        self._select()
        self.partial.count = self.count
        return self.partial


def merge_thresholds(a: ThresholdPartial, b: ThresholdPartial) -> ThresholdPartial:
    """Top `capacity` of both; associative and commutative (the kept multiset is unique)."""
    if (a.capacity, a.quantile) != (b.capacity, b.quantile) or a.top.shape[0] != b.top.shape[0]:
        raise ValueError("threshold partials of different units, quantile or total count")
    both = np.concatenate([a.top, b.top], axis=1)
    return ThresholdPartial(_keep_top(both, a.capacity), a.count + b.count, a.capacity, a.quantile)


def pruning_floor(partial: ThresholdPartial) -> np.ndarray | None:
    """A valid `floor` for other images' partials: each unit's `capacity`-th largest value (-inf when
    fewer are known), or None while no unit has that many."""
    if partial.top.shape[1] < partial.capacity:
        return None
    return partial.top.min(axis=1)


def finalize_thresholds(partial: ThresholdPartial) -> np.ndarray:
    """float32 [U]: the m-th largest value, m = ceil(quantile * activations seen).

    Fewer activations than planned (skipped images) give a smaller m, still within the kept values.
    """
    if partial.count == 0:
        raise ValueError("no activations seen: cannot compute thresholds")
    m, width = top_count(partial.quantile, partial.count), partial.top.shape[1]
    if m > width:
        raise ValueError(f"{partial.count} activations seen per unit, more than the total count the partial was sized for")
    threshold = np.partition(partial.top, width - m, axis=1)[:, width - m].copy()
    if not np.isfinite(threshold).all():
        raise ValueError("fewer values kept than the quantile needs: a pruning floor was above the threshold")
    return threshold


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
