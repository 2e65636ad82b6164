"""The activations stage: per-unit statistics, top/bottom dataset examples and the activation spectrum, as
mergeable partials.

`compute` reduces one batch (every selected layer from one forward pass),
`merge` combines partials associatively, `finalize` turns the merged partial
into table rows and per-layer mean maps. Ties are broken by image id, so the
result does not depend on how images were split into shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations.ranked import PAD_ID, Ranked, batch_ranked
from pipeline.stages.activations.spectrum import Maxima, select

if TYPE_CHECKING:
    from pipeline.inputs.receptive_field import ReceptiveField

@dataclass
class LayerPartial:
    """Sufficient statistics of one layer over some images."""

    images: int
    total: np.ndarray  # float64 [C] sum of activations over images and positions
    total_sq: np.ndarray  # float64 [C]
    positive: np.ndarray  # int64 [C] count of positions > 0
    vmax: np.ndarray  # float32 [C]
    vmin: np.ndarray  # float32 [C]
    map_sum: np.ndarray  # float64 [C, H, W]
    top: Ranked
    bottom: Ranked
    nonfinite: np.ndarray  # int64 [C] NaN or infinite values (counted as 0 in every statistic)
    probe_ids: np.ndarray  # int64 [m] the probe images seen, in the order of `probe`
    probe: np.ndarray  # float32 [m, C] each probe image's mean activation per unit
    maxima: Maxima = field(default_factory=Maxima.none)  # every image's spatial max (kept for the spectrum only)
    prefix_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the images of `prefix`, in order
    prefix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float16))  # [m, P, C] prefix tokens

    @classmethod
    def empty(cls, info: LayerInfo, k: int) -> LayerPartial:
        c, (h, w) = info.units, info.spatial
        return cls(0, np.zeros(c), np.zeros(c), np.zeros(c, np.int64), np.full(c, -np.inf, np.float32),
                   np.full(c, np.inf, np.float32), np.zeros((c, h, w)), Ranked.empty(c, k, True), Ranked.empty(c, k, False),
                   np.zeros(c, np.int64), np.zeros(0, np.int64), np.zeros((0, c), np.float32), Maxima.none(),
                   np.zeros(0, np.int64), np.zeros((0, info.prefix, c), np.float16))

    def merged(self, o: LayerPartial) -> LayerPartial:
        return LayerPartial(
            self.images + o.images, self.total + o.total, self.total_sq + o.total_sq, self.positive + o.positive,
            np.maximum(self.vmax, o.vmax), np.minimum(self.vmin, o.vmin), self.map_sum + o.map_sum,
            self.top.merged(o.top, True), self.bottom.merged(o.bottom, False), self.nonfinite + o.nonfinite,
            np.concatenate([self.probe_ids, o.probe_ids]), np.concatenate([self.probe, o.probe]),
            self.maxima.merged(o.maxima), np.concatenate([self.prefix_ids, o.prefix_ids]),
            np.concatenate([a for a in (self.prefix, o.prefix) if len(a)] or [self.prefix]),  # a batch's may be shapeless
        )


@dataclass
class ActivationsPartial:
    """Everything the stage knows about a set of images; `skipped` lists (image_id, reason)."""

    layers: dict[str, LayerPartial]
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


def empty(layers: list[LayerInfo], k: int) -> ActivationsPartial:
    return ActivationsPartial({info.name: LayerPartial.empty(info, k) for info in layers})


def merge(a: ActivationsPartial, b: ActivationsPartial) -> ActivationsPartial:
    """Associative and commutative (up to float64 rounding of the sums)."""
    return ActivationsPartial(
        {name: a.layers[name].merged(b.layers[name]) for name in a.layers},
        a.images + b.images,
        sorted(a.skipped + b.skipped),
    )


_TINY = 2.0**-100  # a power of two: summing up to 2**24 of them per map is exact in float32


def reduce_batch(out: torch.Tensor, image_ids: np.ndarray, k: int, scratch: torch.Tensor | None = None,
                 probe: np.ndarray | None = None, spectrum: bool = False) -> LayerPartial:
    """One layer's output for a batch ([N, C, H, W]) reduced to a partial.

    Per-image reductions run in float32 (exact enough over one map, and cheap); sums across
    images accumulate in float64. Each image's max and min come with their first position, from
    which a unit's top (or bottom) k within the batch are taken. `scratch`, a reusable tensor of the output's
    shape, saves allocating (and page-faulting) a large temporary on every batch. `probe`
    marks the rows whose per-unit mean activation is kept (the probe set `diff` correlates on).
    NaN and infinite values are counted per unit and then read as 0, so one bad unit cannot
    poison the statistics of the run. `spectrum` keeps every image's spatial max and its arg-max (first occurrence).
    A channels-last output (units on the innermost axis: NHWC, tokens) is reduced as it lies, over positions on
    axis 1 of [N, H*W, C]: reducing its units-first view would copy it, three times slower.
    """
    n, c = out.shape[:2]
    last = out.dim() == 4 and out.stride(1) == 1 and c > 1 and out.shape[2] * out.shape[3] > 1
    flat = (out.detach().permute(0, 2, 3, 1).reshape(n, -1, c) if last else out.detach().reshape(n, c, -1)).float()
    pos = 1 if last else 2  # the positions' axis of `flat`
    positions = flat.shape[pos]
    nonfinite = np.zeros(c, np.int64)
    per_image = flat.sum(dim=pos)
    if not bool(torch.isfinite(per_image).all()):
        finite = torch.isfinite(flat)
        nonfinite = (~finite).sum(dim=(0, pos)).cpu().numpy().astype(np.int64)
        flat = torch.where(finite, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
        per_image = flat.sum(dim=pos)
    rows = np.flatnonzero(probe) if probe is not None else np.zeros(0, np.int64)
    # every image's extremes with their first positions: cheaper than gathering the chosen images' maps afterwards
    if last:
        grid = flat.view(n, out.shape[2], out.shape[3], c)
        (vmax, argmax), (vmin, argmin) = _extreme_last(grid, True), _extreme_last(grid, False)
    else:
        (vmax, argmax), (vmin, argmin) = flat.max(dim=pos), flat.min(dim=pos)
    maxima = Maxima.of_batch(vmax, argmax, image_ids, positions) if spectrum else Maxima.none()
    squares = (torch.mul(flat, flat, out=scratch.view(flat.shape) if scratch is not None else None).sum(dim=pos) if last
               else torch.linalg.vector_norm(flat, dim=pos).square())
    # positives counted as a sum of clamp(x, 0, TINY) / TINY: one pass, no bool-to-int conversion
    marks = torch.clamp(flat, 0.0, _TINY, out=scratch.view(flat.shape) if scratch is not None else None)
    map_sum = flat.sum(dim=0).double()
    return LayerPartial(
        images=n,
        total=per_image.double().sum(dim=0).cpu().numpy(),
        total_sq=squares.double().sum(dim=0).cpu().numpy(),
        positive=np.rint(marks.sum(dim=pos).double().sum(dim=0).cpu().numpy() / _TINY).astype(np.int64),
        vmax=vmax.amax(dim=0).cpu().numpy(),
        vmin=vmin.amin(dim=0).cpu().numpy(),
        map_sum=(map_sum.T if last else map_sum).reshape(out.shape[1:]).cpu().numpy(),
        top=batch_ranked(vmax, argmax, image_ids, k, largest=True),
        bottom=batch_ranked(vmin, argmin, image_ids, k, largest=False),
        nonfinite=nonfinite,
        probe_ids=image_ids[rows].astype(np.int64),
        probe=(per_image[torch.as_tensor(rows, device=flat.device)] / positions).cpu().numpy().astype(np.float32),
        maxima=maxima,
    )


def _extreme_last(grid: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The max (or min) of each image's unit over a channels-last map [N, H, W, C], and its first position h * W + w:
    row by row (torch's arg-max over a non-innermost axis is four times slower than its max)."""
    n, h, w, c = grid.shape
    rows = grid.amax(dim=2) if largest else grid.amin(dim=2)  # [N, H, C]
    value, row = rows.max(dim=1) if largest else rows.min(dim=1)  # the first row holding it
    picked = grid.gather(1, row[:, None, None, :].expand(n, 1, w, c))[:, 0]  # [N, W, C]: that row
    column = picked.argmax(dim=1) if largest else picked.argmin(dim=1)
    return value, row * w + column


def compute(model: nn.Module, layers: list[LayerInfo], batches: Iterable[Batch], k: int,
            probe_ids: frozenset[int] = frozenset(), spectrum: bool = False) -> ActivationsPartial:
    """Reduce batches to one partial; every layer is read from a single forward pass per batch.
    Images in `probe_ids` also keep their per-unit mean activation; `spectrum`: every image keeps its maxima."""
    acc = empty(layers, k)
    current: dict[str, LayerPartial] = {}
    ids_now: list[np.ndarray] = []
    scratch: list[torch.Tensor] = [torch.empty(0)]  # one buffer, as large as the largest layer output

    def reduce(name: str, out: torch.Tensor) -> None:
        if scratch[0].numel() < out.numel() or scratch[0].device != out.device:
            scratch[0] = torch.empty(out.numel(), dtype=torch.float32, device=out.device)
        probe = np.fromiter((int(i) in probe_ids for i in ids_now[0]), bool, len(ids_now[0]))
        current[name] = reduce_batch(out, ids_now[0], k, scratch[0][: out.numel()], probe, spectrum)

    def keep_prefix(name: str, prefix: torch.Tensor) -> None:
        current[name].prefix_ids = ids_now[0].astype(np.int64)
        current[name].prefix = prefix.detach().to(torch.float16).cpu().numpy()

    with tapped(model, layers, reduce, keep_prefix) as run:
        with torch.inference_mode():
            for batch in batches:
                ids_now[:] = [batch.image_ids]
                current.clear()
                run(batch.inputs)
                acc = merge(acc, ActivationsPartial(dict(current), len(batch.image_ids)))
    for part in acc.layers.values():
        part.maxima = part.maxima.compacted()
    return acc


@dataclass(frozen=True)
class LayerResult:
    """Finalized statistics of one layer: column arrays for the units, examples and spectrum tables."""

    units: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    mean_map: np.ndarray  # float32 [C, H, W]
    probe: np.ndarray  # float32 [C, m] mean activation on each probe image, in `probe_ids` order
    probe_ids: np.ndarray  # int64 [m], ascending
    spectrum: dict[str, np.ndarray] = field(default_factory=dict)  # empty: no spectrum (spectrum_quantiles = 0)
    prefix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float16))  # [C, images, P], by image id
    prefix_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [images] of `prefix`, ascending
    prefix_mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [P, C]: over the images


def finalize(partial: ActivationsPartial, info: LayerInfo, rf: ReceptiveField, input_hw: tuple[int, int],
             spectrum: tuple[int, int] = (0, 0)) -> LayerResult:
    """Per-unit statistics, the ranked examples and (`spectrum` = (quantiles, k), quantiles > 0) the spectrum of one layer."""
    p = partial.layers[info.name]
    c, (h, w) = info.units, info.spatial
    count = max(p.images * h * w, 1)
    mean = p.total / count
    std = np.sqrt(np.maximum(p.total_sq / count - mean**2, 0.0))
    vmax = np.where(p.images > 0, p.vmax, np.nan).astype(np.float32)
    vmin = np.where(p.images > 0, p.vmin, np.nan).astype(np.float32)
    units = {
        "layer": np.full(c, info.name, dtype=object),
        "unit": np.arange(c, dtype=np.int32),
        "act_mean": mean.astype(np.float32),
        "act_std": std.astype(np.float32),
        "act_max": vmax,
        "act_min": vmin,
        "frac_active": (p.positive / count).astype(np.float32),
        # never positive anywhere (a ReLU after it always outputs 0) or constant over the data set
        "dead": ~(vmax > 0) | (vmax == vmin),
        "nonfinite": p.nonfinite.astype(np.int64),
    }
    cols: dict[str, list[np.ndarray]] = {}
    for sign, ranked in (("top", p.top), ("bottom", p.bottom)):
        real = ranked.image_id != PAD_ID
        unit_idx, rank = np.nonzero(real)
        part = {"sign": np.full(len(unit_idx), sign, dtype=object),
                **example_columns(info, rf, input_hw, unit_idx, rank, ranked.image_id[real], ranked.value[real],
                                  ranked.position[real])}
        for key, arr in part.items():
            cols.setdefault(key, []).append(arr)
    examples = {key: np.concatenate(parts) for key, parts in cols.items()}
    order = np.lexsort((examples["rank"], examples["sign"] == "bottom", examples["unit"]))
    examples = {key: arr[order] for key, arr in examples.items()}
    mean_map = (p.map_sum / max(p.images, 1)).astype(np.float32)
    order = np.argsort(p.probe_ids, kind="stable")
    by_id = np.argsort(p.prefix_ids, kind="stable")
    return LayerResult(units, examples, mean_map, np.ascontiguousarray(p.probe[order].T), p.probe_ids[order],
                       spectrum_columns(p, info, rf, input_hw, *spectrum),
                       np.ascontiguousarray(p.prefix[by_id].transpose(2, 0, 1)), p.prefix_ids[by_id],
                       prefix_mean(p.prefix[by_id], info.prefix, c))


def prefix_mean(prefix: np.ndarray, tokens: int, units: int) -> np.ndarray:
    """float32 [P, C]: the mean over the images of their prefix activations [images, P, C], in image-id order (the
    same sum whatever the shards); zeros without images."""
    return prefix.astype(np.float64).mean(axis=0).astype(np.float32) if len(prefix) else np.zeros((tokens, units), np.float32)


def example_columns(info: LayerInfo, rf: ReceptiveField, input_hw: tuple[int, int], unit: np.ndarray, rank: np.ndarray,
                    image_id: np.ndarray, value: np.ndarray, position: np.ndarray) -> dict[str, np.ndarray]:
    """The columns an example row has wherever it is listed (examples, spectrum): which image, its activation, the
    arg-max position (y, x) in the feature map and that position's receptive field box."""
    w = info.spatial[1]
    y, x = position // w, position % w
    boxes = rf.boxes(y, x, *input_hw)
    return {
        "layer": np.full(len(unit), info.name, dtype=object), "unit": unit.astype(np.int32), "rank": rank.astype(np.int32),
        "image_id": image_id.astype(np.int64), "activation": value.astype(np.float32),
        "y": y.astype(np.int32), "x": x.astype(np.int32),
        "box_y0": boxes[:, 0].astype(np.int32), "box_x0": boxes[:, 1].astype(np.int32),
        "box_y1": boxes[:, 2].astype(np.int32), "box_x1": boxes[:, 3].astype(np.int32),
    }


def spectrum_columns(p: LayerPartial, info: LayerInfo, rf: ReceptiveField, input_hw: tuple[int, int], quantiles: int,
                     k: int) -> dict[str, np.ndarray]:
    """The spectrum table's rows of one layer, by unit then rank (rank = i * k + j: level i, j-th nearest)."""
    if quantiles <= 0 or not p.maxima.image_ids:
        return {}
    chosen = select(p.maxima, quantiles, k)
    c, q, kk = chosen.image_id.shape
    unit, level, j = (a.ravel() for a in np.indices((c, q, kk)))
    return {**example_columns(info, rf, input_hw, unit, level * k + j, chosen.image_id.ravel(), chosen.value.ravel(),
                              chosen.position.ravel()),
            "quantile": chosen.levels[level].astype(np.float32),
            "quantile_value": chosen.quantile_value[unit, level].astype(np.float32)}
