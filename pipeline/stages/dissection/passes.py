"""Network Dissection's two passes over the concept data set, driven by the model, and the per-layer results.

`dissection.py` holds the arithmetic (thresholds, tally, IoU); this module feeds it every selected
layer's output for each concept batch, one forward pass per batch, and bundles the per-layer
partials with the images it had to skip so that shards merge into one result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.inputs.broden import Broden
from pipeline.inputs.concept_batches import ConceptBatch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.dissection import tally as d
from pipeline.stages.dissection import thresholds as th
from pipeline.stages.dissection import radix
from pipeline.stages.dissection.purity import TopImages, batch_top, packed_labels, purity


@dataclass
class ConceptPartial:
    """One shard's (or several merged shards') partials per layer, and the concept images skipped."""

    layers: dict[str, object]  # layer -> ThresholdPartial, RadixPartial or TallyPartial
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    tops: dict[str, TopImages] = field(default_factory=dict)  # the tally's: layer -> its units' top images (purity)


def label_space(broden: Broden) -> d.LabelSpace:
    """The concept labels of the kept categories, each in its primary category."""
    numbers = sorted(broden.labels)
    return d.LabelSpace.from_labels(numbers, [broden.labels[n].category for n in numbers], broden.categories,
                                    [broden.labels[n].name for n in numbers])


def activation_counts(layers: list[LayerInfo], images: int) -> dict[str, int]:
    """Raw activations per unit over `images` concept images (a [N, C] layer counts as a 1x1 map)."""
    return {info.name: images * int(np.prod(info.shape[1:], dtype=np.int64)) for info in layers}


def threshold_passes(layers: list[LayerInfo], images: int, quantile: float, memory_mb: float) -> list[str]:
    """The passes that find the thresholds: one that keeps the top values, or, when those would take more than
    `memory_mb`, the radix passes that count them in bounded memory (names as the runner checkpoints them)."""
    totals = activation_counts(layers, images)
    kept = sum(radix.kept_bytes(info.units, quantile, totals[info.name]) for info in layers)
    if kept > memory_mb * 2**20:
        return [f"dissection-radix{step}" for step in range(len(radix.PASSES))]
    return ["dissection-thresholds"]


def empty_thresholds(layers: list[LayerInfo], quantile: float, totals: dict[str, int]) -> ConceptPartial:
    return ConceptPartial({i.name: th.ThresholdPartial.empty(i.units, quantile, totals[i.name]) for i in layers})


def empty_tally(layers: list[LayerInfo], space: d.LabelSpace) -> ConceptPartial:
    return ConceptPartial({i.name: d.TallyPartial.empty(i.units, space) for i in layers},
                          tops={i.name: TopImages.empty(i.units) for i in layers})


def merge(a: ConceptPartial, b: ConceptPartial) -> ConceptPartial:
    """Layer by layer; exact and order-independent for both passes."""
    first = next(iter(a.layers.values()), None)
    combine = {d.TallyPartial: d.merge_tally, radix.RadixPartial: radix.merge}.get(type(first), th.merge_thresholds)
    return ConceptPartial({name: combine(part, b.layers[name]) for name, part in a.layers.items()},
                          a.images + b.images, sorted(a.skipped + b.skipped),
                          {name: top.merged(b.tops[name]) for name, top in a.tops.items() if name in b.tops})


def floors(total: ConceptPartial) -> dict[str, np.ndarray]:
    """Per layer, the values that other shards need not return (see `dissection.compute_thresholds`)."""
    out = {}
    for name, part in total.layers.items():
        floor = th.pruning_floor(part)
        if floor is not None:
            out[name] = floor
    return out


def threshold_pass(model: nn.Module, layers: list[LayerInfo], batches: Iterable[ConceptBatch], quantile: float,
                   totals: dict[str, int], floor: dict[str, np.ndarray] | None = None) -> ConceptPartial:
    """Pass 1: each unit's largest raw activations over the batches (those above `floor` only)."""
    floor = floor or {}
    tops = {i.name: th.TopValues(i.units, quantile, totals[i.name], floor.get(i.name)) for i in layers}
    images = 0
    with torch.inference_mode(), tapped(model, layers, lambda name, out: tops[name].add(out)) as run:
        for batch in batches:
            run(batch.inputs)
            images += len(batch.image_ids)
    return ConceptPartial({name: top.result() for name, top in tops.items()}, images)


def radix_pass(model: nn.Module, layers: list[LayerInfo], batches: Iterable[ConceptBatch],
               states: dict[str, radix.RadixState]) -> ConceptPartial:
    """One of the bounded-memory threshold passes: per layer, counts of the values sharing the bits found so far."""
    result = ConceptPartial({i.name: radix.empty(i.units, states[i.name].step) for i in layers})
    reduce = lambda name, out: result.layers.__setitem__(  # noqa: E731
        name, radix.merge(result.layers[name], radix.compute(out, states[name])))
    with torch.inference_mode(), tapped(model, layers, reduce) as run:
        for batch in batches:
            run(batch.inputs)
            result.images += len(batch.image_ids)
    return result


def tally_pass(model: nn.Module, layers: list[LayerInfo], batches: Iterable[ConceptBatch],
               thresholds: dict[str, np.ndarray], space: d.LabelSpace, union: str = "netdissect-lite",
               resize: str = "netdissect-lite") -> ConceptPartial:
    """Pass 2: per layer, the intersection and union counts of every unit with every label."""
    result = empty_tally(layers, space)
    current: list[ConceptBatch] = []

    def reduce(name: str, out: torch.Tensor) -> None:
        batch, encoded, carries = current
        with _one_thread(out.device):
            for size, rows in _by_mask_size(batch.mask_sizes).items():
                pick = torch.as_tensor(rows, device=out.device)
                part = d.compute_tally(out.index_select(0, pick), thresholds[name], [batch.masks[r] for r in rows],
                                       [batch.labels[r] for r in rows], space, encoded=encoded[size],
                                       union=union, resize=resize)
                result.layers[name] = d.merge_tally(result.layers[name], part)
            result.tops[name] = result.tops[name].merged(batch_top(out, batch.image_ids, carries))

    with torch.inference_mode(), tapped(model, layers, reduce) as run:
        for batch in batches:
            groups = _by_mask_size(batch.mask_sizes)
            encoded = {size: d.encode_masks([batch.masks[r] for r in rows], [batch.labels[r] for r in rows], space, size,
                                            union)
                       for size, rows in groups.items()}  # once per batch, shared by every layer
            current[:] = [batch, encoded, [packed_labels(m, lb, space) for m, lb in zip(batch.masks, batch.labels)]]
            run(batch.inputs)
            result.images += len(batch.image_ids)
    return result


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """The tally's many small gathers run about 3x faster on one CPU thread than on two (measured in
    tests/benchmarks/bench_dissection.py); the forward pass keeps the worker's threads."""
    before = torch.get_num_threads()
    if device.type == "cpu" and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _by_mask_size(sizes: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for row, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(row)
    return groups


def layer_results(layers: list[LayerInfo], thresholds: dict[str, np.ndarray], tally: ConceptPartial,
                  space: d.LabelSpace, top: int, iou_threshold: float) -> dict[str, d.DissectionResult]:
    """IoU rankings per layer: dissection-table rows and each unit's best concept, with its top-example purity."""
    out = {}
    for info in layers:
        part = tally.layers[info.name]
        out[info.name] = d.finalize(part, thresholds[info.name], space, top, iou_threshold, layer=info.name)
        best = d.best_labels(d.iou_matrix(part, space)[0], space)[0]
        out[info.name].units["purity"] = purity(tally.tops[info.name], best, space)
    return out
