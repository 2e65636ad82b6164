"""Writing the concept world as a Broden-format directory (README, "The Broden format").

Layout of OUT (read the same way as NetDissect-Lite's loader reads broden1_224):

    images/NNNNN.png               RGB, size x size (NNNNN: 0-based image index, 5+ digits)
    images/NNNNN_color.png         pixel masks, (size//2) x (size//2), label = R + 256*G, B = 0
    images/NNNNN_object.png        (written only when the mask holds a label)
    images/NNNNN_part_1.png        level-1 parts (a house's body, roof; a car's body, wheel)
    images/NNNNN_part_2.png        level-2 parts lying on a level-1 part (door, window, hub, ...)
    images/NNNNN_material.png      background materials (objects have none)
    index.csv                      image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
    category.csv                   name,first,last,count,frequency
    label.csv                      number,name,category,frequency,coverage,syns
    c_<category>.csv               code,number,name,frequency,coverage
    scenes/<scene>/NNNNN.png       the same images as an ImageFolder (hard links, else copies)
    world.json                     generation parameters and a summary

Choices (where Broden leaves room):
- Masks are the full-resolution label maps sampled at pixel [2i, 2j] (nearest, no vote),
  so mask pixel (i, j) describes exactly image pixel (2i, 2j).
- `part` cells hold two planes when an image has level-2 parts (like ADE's _part_1 /
  _part_2 in broden1_224): a pixel can be `body` in plane 1 and `window` in plane 2.
- `scene` is one image-level number; `texture` is one or more image-level numbers, dominant first.
- split: image index % 5 == 4 is "val", the rest "train" (the demo model holds out "val").
- Label numbers 1..L are fixed by the vocabulary (CATEGORY_LABELS, in category order),
  not by what occurs, so they are the same for every world; labels that do not occur
  are listed with frequency 0. Number 0 (unlabeled) is not listed in label.csv: NetDissect
  parses every `category` cell as name(count), which a "-" row would break.
- c_<cat>.csv codes are dense 1..count with no code-0 row (as in broden1_224, e.g.
  "1,6,left,,"); code 0 means unlabeled.
- frequency = number of images holding the label; coverage = the label's mean pixel
  fraction over those images (image-level labels count 1.0), measured on the written masks.
  (broden1_224 sums the fractions instead; only the ranking between categories is used.)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.concepts.vocabulary import CATEGORY_LABELS, SCENE_NAMES, SYNONYMS
from pipeline.concepts.world import Drawing, draw_image
from pipeline.errors import UserError

FORMAT_VERSION = 1
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
INDEX_HEADER = ("image", "split", "ih", "iw", "sh", "sw") + CATEGORIES
MIN_SIZE = 16


@dataclass(frozen=True)
class ConceptWorldSummary:
    """What a concept world holds: where, how many images of what size, labels per category, scenes."""

    out: Path
    images: int
    size: int
    labels_per_category: dict[str, int]
    scene_classes: tuple[str, ...]
    scene_counts: dict[str, int]


@dataclass(frozen=True)
class _Vocabulary:
    """Label numbers: names[n - 1] is label n; numbers[cat][k - 1] is the number of CATEGORY_LABELS[cat][k - 1]."""

    names: tuple[str, ...]
    numbers: dict[str, tuple[int, ...]]

    @classmethod
    def build(cls) -> "_Vocabulary":
        """Numbers in category order; a name in several categories keeps one number (Broden style)."""
        number_of: dict[str, int] = {}
        numbers = {}
        for cat in CATEGORIES:
            for name in CATEGORY_LABELS[cat]:
                number_of.setdefault(name, len(number_of) + 1)
            numbers[cat] = tuple(number_of[name] for name in CATEGORY_LABELS[cat])
        return cls(tuple(number_of), numbers)

    def lut(self, cat: str) -> np.ndarray:
        """Map a 1-based vocabulary index map (0 = none) to label numbers."""
        return np.array((0,) + self.numbers[cat], dtype=np.int32)


class _Stats:
    """Per (category, label): images holding it and the sum of its pixel fractions; per category: images."""

    def __init__(self) -> None:
        self.images: dict[tuple[str, int], int] = defaultdict(int)
        self.cover: dict[tuple[str, int], float] = defaultdict(float)
        self.label_images: dict[int, int] = defaultdict(int)
        self.label_cover: dict[int, float] = defaultdict(float)
        self.category_images: dict[str, int] = defaultdict(int)

    def add_image(self, fractions: dict[str, dict[int, float]]) -> None:
        """Record one image: category -> {label number: pixel fraction}."""
        per_label: dict[int, float] = {}
        for cat, labels in fractions.items():
            if labels:
                self.category_images[cat] += 1
            for number, frac in labels.items():
                self.images[cat, number] += 1
                self.cover[cat, number] += frac
                per_label[number] = max(per_label.get(number, 0.0), frac)
        for number, frac in per_label.items():
            self.label_images[number] += 1
            self.label_cover[number] += frac


def _mask_fractions(planes: list[np.ndarray]) -> dict[int, float]:
    """Pixel fraction of each label over the union of a category's planes."""
    found: dict[int, float] = {}
    for number in sorted(set(np.unique(np.stack(planes)).tolist()) - {0}):
        hit = np.zeros(planes[0].shape, bool)
        for plane in planes:
            hit |= plane == number
        found[number] = float(hit.mean())
    return found


def save_mask(path: Path, labels: np.ndarray) -> None:
    """A label map as RGB PNG: R = n % 256, G = n // 256, B = 0."""
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb, "RGB").save(path, format="PNG")


def _write_image(images_dir: Path, index: int, drawing: Drawing, vocab: _Vocabulary, stats: _Stats) -> dict[str, str]:
    """Write one image and its masks; returns its index.csv row and records its statistics."""
    name = f"{index:05d}"
    size = drawing.rgb.shape[0]
    sh = size // 2
    Image.fromarray(drawing.rgb, "RGB").save(images_dir / f"{name}.png", format="PNG")
    row = {"image": f"{name}.png", "split": "val" if index % 5 == 4 else "train",
           "ih": str(size), "iw": str(size), "sh": str(sh), "sw": str(sh)}
    planes_of = {"color": ["color"], "object": ["object"], "part": ["part_1", "part_2"], "material": ["material"]}
    fractions: dict[str, dict[int, float]] = {}
    for cat, map_names in planes_of.items():
        files, planes = [], []
        for map_name in map_names:
            plane = vocab.lut(cat)[drawing.maps[map_name][0:2 * sh:2, 0:2 * sh:2]]
            if plane.any():
                file = f"{name}_{map_name}.png"
                save_mask(images_dir / file, plane)
                files.append(file)
                planes.append(plane)
        row[cat] = ";".join(files)
        fractions[cat] = _mask_fractions(planes) if planes else {}
    scene = vocab.numbers["scene"][SCENE_NAMES.index(drawing.scene)]
    textures = [vocab.numbers["texture"][CATEGORY_LABELS["texture"].index(t)] for t in drawing.textures]
    row["scene"] = str(scene)
    row["texture"] = ";".join(str(n) for n in textures)
    fractions["scene"] = {scene: 1.0}
    fractions["texture"] = {n: 1.0 for n in textures}
    stats.add_image(fractions)
    return row


def write_csv(path: Path, header: tuple[str, ...], rows: list[dict[str, str]] | list[tuple]) -> None:
    """A CSV with '\\n' line ends (byte-identical on every platform)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[k] for k in header] if isinstance(row, dict) else row)


def _write_tables(root: Path, vocab: _Vocabulary, stats: _Stats) -> None:
    """label.csv, category.csv and one c_<cat>.csv per category."""
    labels = []
    for number, name in enumerate(vocab.names, start=1):
        cats = [c for c in CATEGORIES if number in vocab.numbers[c]]
        category = ";".join(f"{c}({stats.images[c, number]})" for c in cats)
        freq = stats.label_images[number]
        labels.append((number, name, category, freq, f"{stats.label_cover[number] / max(freq, 1):.6f}",
                       ";".join(SYNONYMS.get(name, ()))))
    write_csv(root / "label.csv", ("number", "name", "category", "frequency", "coverage", "syns"), labels)
    categories = []
    for cat in CATEGORIES:
        numbers = vocab.numbers[cat]
        categories.append((cat, min(numbers), max(numbers), len(numbers), stats.category_images[cat]))
        rows = []
        for code, number in enumerate(numbers, start=1):
            freq = stats.images[cat, number]
            rows.append((code, number, vocab.names[number - 1], freq, f"{stats.cover[cat, number] / max(freq, 1):.6f}"))
        write_csv(root / f"c_{cat}.csv", ("code", "number", "name", "frequency", "coverage"), rows)
    write_csv(root / "category.csv", ("name", "first", "last", "count", "frequency"), categories)


def _link_scene_view(root: Path, rows: list[dict[str, str]], scenes: list[str]) -> None:
    """scenes/<scene>/<image>: hard links to images/ (copies where links fail), an ImageFolder of scene classes."""
    for row, scene in zip(rows, scenes):
        target = root / "scenes" / scene / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / "images" / row["image"], target)
        except OSError:
            shutil.copyfile(root / "images" / row["image"], target)


def _write_world(root: Path, params: dict) -> dict:
    """Draw and write every file of the world into `root`; returns the summary stored in world.json."""
    (root / "images").mkdir(parents=True)
    vocab, stats = _Vocabulary.build(), _Stats()
    rows, scenes = [], []
    for index in range(params["images"]):
        drawing = draw_image(index, params["size"], params["seed"])
        rows.append(_write_image(root / "images", index, drawing, vocab, stats))
        scenes.append(drawing.scene)
    write_csv(root / "index.csv", INDEX_HEADER, rows)
    _write_tables(root, vocab, stats)
    _link_scene_view(root, rows, scenes)
    summary = {"labels_per_category": {c: len(CATEGORY_LABELS[c]) for c in CATEGORIES},
               "scene_classes": list(SCENE_NAMES),
               "scene_counts": {s: scenes.count(s) for s in SCENE_NAMES}}
    document = dict(params, format="neuron-catalog concept world (Broden format)", summary=summary)
    (root / "world.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def _summary(out: Path, params: dict, summary: dict) -> ConceptWorldSummary:
    return ConceptWorldSummary(out, params["images"], params["size"], dict(summary["labels_per_category"]),
                               tuple(summary["scene_classes"]), dict(summary["scene_counts"]))


def _existing(out: Path, params: dict) -> ConceptWorldSummary | None:
    """The summary of a finished world with these parameters at `out`; None when `out` is absent or an empty folder."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    fix = "Delete it or choose another OUT directory."
    try:
        document = json.loads((out / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{out} exists and is not a concept world (no readable world.json). {fix}") from None
    found = {k: document.get(k) for k in params}
    if found != params:
        raise UserError(f"{out} holds a concept world made with {found}, not the requested {params}. {fix}")
    return _summary(out, params, document["summary"])


def make_concept_world(out: Path, images: int = 600, size: int = 64, seed: int = 0) -> ConceptWorldSummary:
    """Write the concept world to `out` (atomically), or return the one already there with the same parameters."""
    out = Path(out)
    if images < 1 or size < MIN_SIZE:
        raise UserError(f"the concept world needs at least 1 image of at least {MIN_SIZE} px; got {images} images of {size} px.")
    params = {"format_version": FORMAT_VERSION, "images": int(images), "size": int(size), "seed": int(seed)}
    found = _existing(out, params)
    if found is not None:
        return found
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _write_world(tmp, params)
        try:
            os.rename(tmp, out)  # replaces an empty folder; fails when another writer finished first
        except OSError:
            found = _existing(out, params)
            if found is None:
                raise
            return found
        return _summary(out, params, summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
