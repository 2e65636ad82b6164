"""On the driver: what each intervention task edits. Per layer, the concepts its units are labelled with; per concept,
its units ranked by IoU (the dissection's table), seeded random unit sets, and the generated images where the
concept is present and where it is absent (the segmenter's masks in the sample)."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.inputs.broden import Broden, load_masks
from pipeline.inputs.images import SkippedImage
from pipeline.inputs.models import LayerInfo
from pipeline.stages.dissection.tally import DissectionResult
from pipeline.stages.interventions.settings import InterventionsSettings


@dataclass(frozen=True)
class Task:
    """One (layer, concept): the units to switch off or on, the images, the inserted square on the layer's grid."""

    layer: LayerInfo
    concept: str
    category: str
    number: int  # the concept's label number in the segmenter's masks
    top: tuple[int, ...]  # units by IoU with the concept, best first (max_units of them)
    random: tuple[tuple[int, ...], ...]  # per draw, max_units distinct random units (the first n: n random units)
    present: tuple[str, ...]  # images where the concept covers at least `present` of the pixels
    absent: tuple[str, ...]  # images without a pixel of it
    region: tuple[int, int, int, int]  # (y0, x0, y1, x1) on the layer's grid: where insertion writes
    examples: int


def concept_pixels(broden: Broden) -> tuple[dict[str, Counter], int]:
    """Per image name, label number -> pixels carrying it (in any plane); the masks' pixel count."""
    found, area = {}, 0
    for image in broden.images:
        try:
            masks = load_masks(broden, image)
        except SkippedImage:
            continue
        counts: Counter = Counter()
        for planes in masks.values():
            for number in np.unique(planes[planes > 0]):
                counts[int(number)] += int((planes == number).any(axis=0).sum())
        found[image.image], area = counts, image.mask_size[0] * image.mask_size[1]
    return found, area


def tasks_of_layer(info: LayerInfo, result: DissectionResult, names: list[str], pixels: dict[str, Counter],
                   area: int, numbers: dict[str, int], settings: InterventionsSettings, seed: int) -> list[Task]:
    """The layer's tasks: its most common interpretable labels, each with its ranked units and its images."""
    best = result.units
    labels = Counter(str(label) for label, ok in zip(best["label"], best["interpretable"]) if ok and label is not None)
    rows = result.concepts
    chosen = [c for c, _ in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))][: settings.concepts]
    n = min(settings.max_units, info.units)
    h, w = info.spatial
    side = settings.insert_cells or max(1, min(h, w) // 4)
    y0, x0 = max(0, h // 2 - side // 2), max(0, w // 2 - side // 2)
    region = (y0, x0, min(h, y0 + side), min(w, x0 + side))
    tasks = []
    for concept in chosen:
        mine = rows["concept"] == concept
        ious = dict(zip(rows["unit"][mine].tolist(), rows["iou"][mine].tolist()))
        top = sorted(range(info.units), key=lambda u: (-ious.get(u, -1.0), u))[:n]
        number = numbers[concept]
        present = [m for m in names if pixels.get(m, Counter())[number] >= settings.present * area][: settings.images]
        absent = [m for m in names if pixels.get(m, Counter())[number] == 0][: settings.images]
        rng = np.random.default_rng([seed, zlib.crc32(info.name.encode()), number])
        draws = tuple(tuple(int(u) for u in rng.permutation(info.units)[:n]) for _ in range(settings.draws))
        tasks.append(Task(info, concept, str(rows["category"][mine][0]) if mine.any() else "", number, tuple(top),
                          draws, tuple(present), tuple(absent), region, settings.examples))
    return tasks
