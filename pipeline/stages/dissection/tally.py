"""The dissection stage: Network Dissection (Bau et al. 2017, NetDissect-Lite) as mergeable partials.

The second pass over the concept data set, a `compute` -> `merge` -> `finalize` triple (the first,
the thresholds, is in thresholds.py):

tally: per image, each unit's map resized to the mask size (by default as NetDissect-Lite's
   imresize mode 'F', Pillow's bilinear, see `pil_resize.py`) and binarized `> t`; counts of
   activated pixels on each label, of label pixels, and of each category's union term Ucat (by
   default NetDissect-Lite's rule: see `compute_tally`). Partials are int64 counts that merge by
   addition: results do not depend on sharding.

`finalize` turns a tally into IoU = I / (Ucat + A - I) and the per-unit rankings, read out as
NetDissect-Lite does. The label semantics (planes, image-level labels) are in `concept_masks.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from pipeline.stages.dissection.bilinear import Bilinear, upsample
from pipeline.stages.dissection.concept_masks import UNIONS, EncodedMasks, LabelSpace, encode_masks
from pipeline.stages.dissection.packed_counts import pack, unpack
from pipeline.stages.dissection.pil_resize import PilResize

__all__ = ["Bilinear", "LabelSpace", "EncodedMasks", "PilResize", "UNIONS", "encode_masks", "upsample"]  # re-exported

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

    def __getstate__(self) -> dict:
        return {**self.__dict__, "intersection": pack(self.intersection)}  # [U, L]: a shard meets few of many labels

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "intersection": unpack(state["intersection"])})


def merge_tally(a: TallyPartial, b: TallyPartial) -> TallyPartial:
    """Sum of counts: associative and commutative, exactly."""
    return TallyPartial(a.intersection + b.intersection, a.label_area + b.label_area,
                        a.unit_cat + b.unit_cat, a.unit_area + b.unit_area, a.images + b.images)


RESIZES = ("netdissect-lite", "bilinear", "torch")


def compute_tally(acts: torch.Tensor, thresholds: np.ndarray, masks_per_image: Sequence[Mapping[str, np.ndarray]],
                  image_labels_per_image: Sequence[Mapping[str, Sequence[int]]], label_space: LabelSpace, *,
                  mask_size: tuple[int, int] | None = None, resize: str = "netdissect-lite",
                  union: str = "netdissect-lite", encoded: EncodedMasks | None = None,
                  chunk_elements: int = 1 << 23) -> TallyPartial:
    """Pass 2 over a batch: `acts` [N, U, h, w]; per image, category -> int32 [planes, sh, sw] label
    numbers (0: none) and category -> image-level label numbers (or `encoded`, the same already
    encoded by `encode_masks` with this `union`, to share the work between layers).

    `resize`: "netdissect-lite", Pillow's bilinear resize (`PilResize`, antialiased when the map is
    larger than the mask; decided in float32 except for pixels within rounding of the threshold);
    "bilinear", bilinear sampling without antialiasing (`Bilinear`, evaluated only in the cells with
    a corner near the threshold); "torch", F.interpolate (its reference).

    `union`, the category term Ucat of a unit's union with a label: "netdissect-lite" counts a unit's
    activated pixels in an image for a category when one of them lies on a label of that category
    or the image has an image-level label of it (NetDissect-Lite's `tally_job`); "image" counts them
    whenever the image carries a label of the category anywhere.

    Only maps whose maximum comes near the threshold are resized, `chunk_elements // (sh*sw)` at a time;
    activated pixels are counted per (unit, label) with one bincount of the batch's label map.
    """
    n, units = acts.shape[:2]
    encoded = _checked(n, masks_per_image, image_labels_per_image, label_space, mask_size, resize, union, encoded)
    size, s, nlab, dev = encoded.size, encoded.size[0] * encoded.size[1], label_space.size, acts.device
    ncat, planes, x = len(label_space.category_names), encoded.pixel.shape[2], acts.detach().float()
    pixel = torch.from_numpy(encoded.pixel).to(dev).view(n * s, planes).int()  # int32: half the gathered bytes
    thr = torch.tensor(np.asarray(thresholds, dtype=np.float32), device=dev)
    near = thr - thr.abs() * 1e-5
    img, unit = torch.nonzero(x.amax(dim=(2, 3)) > near, as_tuple=True)
    counts = torch.zeros(n, units, dtype=torch.int64, device=dev)
    both = torch.zeros(units * (nlab + 1), dtype=torch.int64, device=dev)  # column 0 of each unit: no label
    by_hits = union == "netdissect-lite"
    unit_cat = torch.zeros(units, ncat, dtype=torch.int64, device=dev)
    label_cat = torch.as_tensor(np.append(ncat, label_space.category), device=dev).int()  # label index + 1 -> category
    scalar_cat = torch.from_numpy(encoded.has_cat > 0).to(dev)
    step = max(1, chunk_elements // s)
    for start in range(0, len(img), step):
        im, un = img[start:start + step], unit[start:start + step]
        row, pos = _activated(resize, x, im, un, thr, near, size)
        on = torch.bincount(row, minlength=len(im))
        counts[im, un] = on
        hit = scalar_cat.index_select(0, im) if by_hits else None  # [maps, C]
        if planes and nlab:
            labs = pixel.index_select(0, im.index_select(0, row) * s + pos)  # [activated pixels, planes], 0: none
            keys = un.index_select(0, row).to(_keys(units * (nlab + 1)))[:, None] * (nlab + 1) + labs
            both += torch.bincount(keys.view(-1), minlength=units * (nlab + 1))
            if by_hits:
                hit = hit | _categories_hit(row, labs, label_cat, len(im), ncat)
        if by_hits:
            unit_cat.index_add_(0, un, on[:, None] * hit)
    by_image = counts.cpu().numpy().T.astype(np.float64)  # [U, n]; float64 products are exact below 2^53
    exact = lambda a: np.rint(a).astype(np.int64)  # noqa: E731
    return TallyPartial(
        intersection=both.view(units, nlab + 1)[:, 1:].cpu().numpy() + exact(by_image @ encoded.image_level),
        label_area=encoded.label_area.copy(),
        unit_cat=unit_cat.cpu().numpy() if by_hits else exact(by_image @ encoded.has_cat),
        unit_area=exact(by_image.sum(axis=1)),
        images=n,
    )


def _checked(n: int, masks: Sequence[Mapping[str, np.ndarray]], labels: Sequence[Mapping[str, Sequence[int]]],
             space: LabelSpace, mask_size: tuple[int, int] | None, resize: str, union: str,
             encoded: EncodedMasks | None) -> EncodedMasks:
    """The batch's encoded masks, after checking the arguments agree."""
    if len(masks) != n or len(labels) != n:
        raise ValueError(f"{n} images of activations, {len(masks)} of masks, {len(labels)} of labels")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, not {resize!r}")
    if encoded is None:
        size = tuple(mask_size) if mask_size is not None else _mask_size(masks)
        return encode_masks(masks, labels, space, size, union)
    if encoded.union != union:
        raise ValueError(f"masks encoded for union {encoded.union!r}, tally asked for {union!r}")
    return encoded


def _activated(resize: str, x: torch.Tensor, im: torch.Tensor, un: torch.Tensor, thr: torch.Tensor,
               near: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(map index into im/un, flat pixel index) of the pixels of maps x[im, un] resized to `size` above thr[un]."""
    maps, source, device = x[im, un], tuple(x.shape[2:]), str(x.device)
    if resize == "bilinear":
        return _bilinear(source, tuple(size), device).on_pixels(maps, thr[un], near[un])
    if resize == "netdissect-lite":
        return _pil_resize(source, tuple(size), device).on_pixels(maps, thr[un])
    return torch.nonzero(upsample(maps, size).reshape(len(im), -1) > thr[un][:, None], as_tuple=True)


def _categories_hit(row: torch.Tensor, labs: torch.Tensor, label_cat: torch.Tensor, maps: int, ncat: int) -> torch.Tensor:
    """bool [maps, C]: some activated pixel of the map lies on a label of the category (NetDissect-Lite's tally_cat > 0)."""
    cat_of = label_cat.index_select(0, labs.view(-1)).view_as(labs)
    cats = row.to(_keys(maps * (ncat + 1)))[:, None] * (ncat + 1) + cat_of
    return torch.bincount(cats.view(-1), minlength=maps * (ncat + 1)).view(maps, ncat + 1)[:, :ncat] > 0


def _keys(bins: int) -> torch.dtype:
    """int32 bincount keys (half the bytes of int64) while `bins` fit in them."""
    return torch.int32 if bins < 2**31 else torch.int64


@lru_cache(maxsize=64)
def _pil_resize(source: tuple[int, int], size: tuple[int, int], device: str) -> PilResize:
    return PilResize.build(source, size, device)  # once per layer and mask size: its coefficients take Python loops


@lru_cache(maxsize=64)
def _bilinear(source: tuple[int, int], size: tuple[int, int], device: str) -> Bilinear:
    return Bilinear.build(source, size, device)


def _mask_size(masks: Sequence[Mapping[str, np.ndarray]]) -> tuple[int, int]:
    for per_image in masks:
        for planes in per_image.values():
            if planes is not None and np.size(planes):
                return tuple(np.shape(planes)[-2:])
    raise ValueError("no pixel masks in this batch: pass mask_size=(sh, sw)")


# ---------------------------------------------------------------- finalize


def best_labels(iou: np.ndarray, space: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
    """(label index or -1, its IoU) per unit, read out as NetDissect-Lite's `tally` does."""
    units = iou.shape[0]
    best, best_iou = np.full(units, -1), np.zeros(units)
    for c in range(len(space.category_names)):
        cols = np.flatnonzero(space.category == c)
        if cols.size:
            pick = cols[iou[:, cols].argmax(axis=1)]  # first maximum: the smaller number
            score = iou[np.arange(units), pick]
            later = score >= best_iou  # a tie goes to the later category
            best, best_iou = np.where(later, pick, best), np.where(later, score, best_iou)
    return np.where(best_iou > 0, best, -1), best_iou


@dataclass(frozen=True)
class DissectionResult:
    """`concepts`: columns of the dissection table (top `top` labels of every category per unit);
    `units`: the best label per unit (units-table columns); `iou`: float32 [U, L]."""

    concepts: dict[str, np.ndarray]
    units: dict[str, np.ndarray]
    iou: np.ndarray = field(repr=False)


def iou_matrix(tally: TallyPartial, space: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
    """(IoU float64 [U, L], union int64 [U, L]); IoU = I / (Ucat[u, cat(l)] + A[l] - I + 1e-10), as
    NetDissect-Lite computes it (0 where the union is 0)."""
    union = tally.unit_cat[:, space.category] + tally.label_area[None, :] - tally.intersection
    return tally.intersection / (union + 1e-10), union


def finalize(tally: TallyPartial, thresholds: np.ndarray, label_space: LabelSpace, top: int = 5,
             iou_threshold: float = 0.04, *, layer: str | None = None) -> DissectionResult:
    """Rankings by IoU, ties broken by label number; rows sorted by unit, category, rank.

    Every category's top `top` labels appear (IoU 0 included). A unit's best label is NetDissect-Lite's:
    each category's best (ties: the smaller number), then the best of those (ties: the later category);
    None when its IoU is 0. `layer`, when given, adds a layer column to both tables.
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
    best, best_iou = best_labels(iou, space)
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
