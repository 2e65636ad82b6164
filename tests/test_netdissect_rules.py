"""The dissection's default rules against NetDissect-Lite's, counted as its code counts them.

`_tally_job` below re-implements NetDissect-Lite's `FeatureOperator.tally_job` and `tally` (feature_operation.py,
CSAILVision/NetDissect-Lite) loop for loop: per image, per unit, skip a map whose maximum is not above the
threshold, resize it with Pillow's bilinear (scipy's imresize mode 'F'), bincount the labels of every plane
of every category at the activated pixels, and count the unit's pixels towards each category that one of them
hits or that an image-level label names. The labels are read from the Broden files on disk with its rules
(`resolve_segmentation`: R + 256*G, image-level cells as numbers; primary category: the largest coverage in
the c_<cat>.csv tables). The stage reads the same files with its own reader. Maps are larger than, equal to
and smaller than the masks; pixels carry several labels, a label sits in another category's plane and twice
at one pixel, and a scene cell names an object label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.inputs.broden import load_masks, open_broden
from pipeline.stages.dissection import passes, pil_resize
from pipeline.stages.dissection import tally as d
from pipeline.stages.dissection import thresholds as th

MASK = 12
LABELS = [  # number, name, {category: coverage}
    (1, "red", {"object": 0.20}), (2, "tree", {"object": 0.15}), (3, "wheel", {"part": 0.05}),
    (4, "door", {"object": 0.30, "part": 0.10}), (5, "roof", {"part": 0.08}),
    (6, "beach", {"scene": 0.5}), (7, "forest", {"scene": 0.4}), (8, "sky", {"object": 0.25}),
]
CATEGORIES = ("object", "part", "scene")


def _png(path: Path, labels: np.ndarray) -> None:
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb).save(path)


def _blocks(rng: np.random.Generator, choices: list[int]) -> np.ndarray:
    return np.kron(rng.choice(choices, size=(4, 4)), np.ones((3, 3), np.int64))


def _write_broden(root: Path, images: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(images):
        name = f"{i:02d}"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        _png(root / "images" / f"{name}_object.png", _blocks(rng, [0, 1, 2, 4]))
        parts = []
        for k in range(i % 3):  # 0, 1 or 2 part planes
            plane = _blocks(rng, [0, 3, 4, 5])
            if k == 1:
                plane[:3, :3] = 4  # door again where plane 1 may hold it too
            _png(root / "images" / f"{name}_part_{k}.png", plane)
            parts.append(f"{name}_part_{k}.png")
        scene = [str(rng.choice([6, 7]))] + (["7"] if i % 4 == 1 else []) + (["8"] if i % 5 == 2 else [])
        rows.append([f"{name}.png", "train", 24, 24, MASK, MASK, f"{name}_object.png", ";".join(parts),
                     ";".join(scene) if i != 3 else ""])
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], rows)
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[n, name, ";".join(f"{c}(3)" for c in cov), 3, max(cov.values()), ""] for n, name, cov in LABELS])
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], [[c, 0, 0, 0, images] for c in CATEGORIES])
    for cat in CATEGORIES:
        mine = [(n, name, cov[cat]) for n, name, cov in LABELS if cat in cov]
        _csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[k + 1, n, name, 3, c] for k, (n, name, c) in enumerate(mine)])


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


# ---------------------------------------------------------------- NetDissect-Lite, as its code does it


def _concept_maps(root: Path) -> list[dict]:
    """index.csv read as resolve_segmentation does: numbers stay lists, a cell with a .png becomes int planes."""
    out = []
    with open(root / "index.csv") as f:
        for i, row in enumerate(csv.DictReader(f)):
            cmap = {"i": i, "sh": int(row["sh"]), "sw": int(row["sw"])}
            for cat in CATEGORIES:
                items = [int(v) if v.isdigit() else v for v in row[cat].split(";") if v]
                if all(isinstance(v, int) for v in items):
                    cmap[cat] = items
                    continue
                planes = np.empty((len(items), cmap["sh"], cmap["sw"]), np.int64)
                for k, item in enumerate(items):
                    rgb = np.asarray(Image.open(root / "images" / item)).astype(np.int64)
                    planes[k] = rgb[:, :, 0] + rgb[:, :, 1] * 256
                cmap[cat] = planes
            out.append(cmap)
    return out


def _labelcat(labels: int) -> np.ndarray:
    """One-hot [labels, C] of each label's primary category: the largest coverage (ties: the later category)."""
    primary = np.zeros(labels, np.int64)
    for n, _, cov in LABELS:
        primary[n] = max((cov.get(c, 0), ic) for ic, c in enumerate(CATEGORIES))[1]
    return np.eye(len(CATEGORIES))[primary]


def _imresize(fmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(fmap.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR))


def _tally_job(features: np.ndarray, threshold: np.ndarray, data: list[dict], labelcat: np.ndarray):
    units, labels = features.shape[1], labelcat.shape[0]
    tally_both, tally_units = np.zeros((units, labels)), np.zeros(units)
    tally_units_cat, tally_labels = np.zeros((units, len(CATEGORIES))), np.zeros(labels)
    for concept_map in data:
        scalars, pixels = [], []
        for cat in CATEGORIES:
            group = concept_map[cat]
            if len(np.shape(group)) % 2 == 0:
                group = [group]
            if len(np.shape(group)) < 2:
                scalars += group
            else:
                pixels.append(group)
        for scalar in scalars:
            tally_labels[scalar] += concept_map["sh"] * concept_map["sw"]
        if pixels:
            pixels = np.concatenate(pixels)
            tally_label = np.bincount(pixels.ravel())
            tally_label[0] = 0
            tally_labels[:len(tally_label)] += tally_label
        for u in range(units):
            fmap = features[concept_map["i"]][u]
            if fmap.max() > threshold[u]:
                mask = _imresize(fmap, (concept_map["sh"], concept_map["sw"]))
                indexes = np.argwhere(mask > threshold[u])
                tally_units[u] += len(indexes)
                tally_cat = np.zeros(len(CATEGORIES))  # NetDissect-Lite leaves it unset without pixels: never here
                if len(pixels) > 0:
                    tally_bt = np.bincount(pixels[:, indexes[:, 0], indexes[:, 1]].ravel())
                    if len(tally_bt) > 0:
                        tally_bt[0] = 0
                    tally_cat = np.dot(tally_bt[None, :], labelcat[:len(tally_bt), :])[0]
                    tally_both[u, :len(tally_bt)] += tally_bt
                for scalar in scalars:
                    tally_cat += labelcat[scalar]
                    tally_both[u, scalar] += len(indexes)
                tally_units_cat[u] += len(indexes) * (tally_cat > 0)
    tally_units_cat = np.dot(tally_units_cat, labelcat.T)
    iou = tally_both / (tally_units_cat + tally_labels[None, :] - tally_both + 1e-10)
    primary = labelcat.argmax(axis=1)
    pciou = np.array([iou * (primary == ci)[None, :] for ci in range(len(CATEGORIES))])
    label_pciou = pciou.argmax(axis=2)
    score = pciou[np.arange(len(CATEGORIES))[:, None], np.arange(units)[None, :], label_pciou]
    bestcat = score.argsort(axis=0)[::-1][0]
    best = label_pciou[bestcat, np.arange(units)]
    return tally_both, tally_units, tally_units_cat, tally_labels, iou, best


# ---------------------------------------------------------------- the cross-check


def _features(root: Path, size: int, seed: int) -> torch.Tensor:
    """Per image 6 units at size x size: detectors of red / door (any plane) / beach over noise, two units of
    blocky noise (that survives antialiasing), and a dead unit."""
    rng = np.random.default_rng(seed)
    data = _concept_maps(root)
    near = np.clip((np.arange(size) * MASK) // size, 0, MASK - 1)
    feats = np.maximum(rng.normal(size=(len(data), 6, size, size)), 0).astype(np.float32) * 0.5
    for i, cmap in enumerate(data):
        planes = [cmap[c] for c in ("object", "part") if np.ndim(cmap[c]) == 3]
        labels = np.concatenate(planes)[:, near][:, :, near]
        feats[i, 0] += 2.0 * (labels == 1).any(axis=0)
        feats[i, 1] += 1.5 * (labels == 4).any(axis=0)
        feats[i, 2] += 1.0 * (6 in cmap["scene"])
    grid = np.clip((np.arange(size) * 3) // size, 0, 2)
    feats[:, 3:5] = rng.normal(size=(len(data), 2, 3, 3)).astype(np.float32)[:, :, grid][:, :, :, grid]
    feats[:, 5] = 0.0
    return torch.from_numpy(feats)


@pytest.mark.parametrize("size", [24, 12, 5])  # maps larger than, equal to and smaller than the 12 px masks
def test_counts_ious_and_labels_equal_netdissect_lite(tmp_path, size):
    _write_broden(tmp_path)
    acts = _features(tmp_path, size, seed=size)
    n = len(acts)
    thresholds = th.finalize_thresholds(th.compute_thresholds(acts, 0.1, n * size * size))
    broden = open_broden(tmp_path)
    assert [broden.labels[4].category, broden.labels[8].category] == ["object", "object"]
    space = passes.label_space(broden)
    masks = [load_masks(broden, image) for image in broden.images]
    labels = [image.labels for image in broden.images]
    ours = d.compute_tally(acts, thresholds, masks, labels, space)
    result = d.finalize(ours, thresholds, space)

    labelcat = _labelcat(max(n for n, _, _ in LABELS) + 1)
    both, units, units_cat, label_area, iou, best = _tally_job(acts.numpy(), thresholds, _concept_maps(tmp_path), labelcat)
    numbers = space.numbers
    np.testing.assert_array_equal(ours.intersection, both[:, numbers])
    np.testing.assert_array_equal(ours.label_area, label_area[numbers])
    np.testing.assert_array_equal(ours.unit_area, units)
    np.testing.assert_array_equal(ours.unit_cat[:, space.category], units_cat[:, numbers])
    np.testing.assert_array_equal(result.iou, iou[:, numbers].astype(np.float32))
    alive = iou.max(axis=1) > 0
    assert alive.tolist() == [True] * 5 + [False]  # the dead unit: NetDissect-Lite names a label of IoU 0, here None
    names = {n: name for n, name, _ in LABELS}
    assert list(result.units["label"][alive]) == [names[b] for b in best[alive]]
    assert result.units["label"][5] is None
    # the planted detectors, and a tally that exercises what differs from the "image" rule
    assert list(result.units["label"][:2]) == ["red", "door"]
    old = d.compute_tally(acts, thresholds, masks, labels, space, union="image")
    assert (old.unit_cat != ours.unit_cat).any() and (old.intersection != ours.intersection).any()
    if size > MASK:  # bilinear sampling without antialiasing activates other pixels
        sampled = d.compute_tally(acts, thresholds, masks, labels, space, resize="bilinear")
        assert (sampled.unit_area != ours.unit_area).any()


@pytest.mark.parametrize("source, size", [((64, 64), (32, 32)), ((224, 224), (112, 112)), ((24, 24), (12, 12)),
                                          ((12, 12), (5, 5)), ((5, 5), (12, 12)), ((7, 7), (112, 112)),
                                          ((7, 9), (3, 4)), ((20, 64), (40, 32)), ((1, 1), (4, 4)), ((13, 13), (7, 7)),
                                          ((112, 112), (14, 14)), ((64, 20), (32, 40)), ((9, 8), (6, 7))])
@pytest.mark.parametrize("dense_above", [0.0, 1.0])  # upsampled maps: always resized whole / always by candidates
def test_pil_resize_equals_pillow_and_its_threshold_test_equals_the_whole_resize(source, size, dense_above, monkeypatch):
    monkeypatch.setattr(pil_resize, "DENSE_ABOVE", dense_above)
    rng = np.random.default_rng(5)
    maps = (rng.standard_normal((40, *source)) * 3).astype(np.float32)
    maps[:10] = np.round(maps[:10])  # constant patches: values tie with the threshold
    pillow = np.stack([_imresize(m, size) for m in maps])
    resize = d.PilResize.build(source, size)
    whole = resize.resize(torch.from_numpy(maps))
    np.testing.assert_array_equal(whole.numpy(), pillow)
    quantiles = [torch.from_numpy(np.quantile(maps.reshape(40, -1), q, axis=1).astype(np.float32)) for q in (0.9, 0.995)]
    for thr in (*quantiles, whole.reshape(40, -1)[:, 0].clone()):  # the second: thresholds equal to a resized value
        expected = whole.reshape(40, -1) > thr[:, None]
        m, pos = resize.on_pixels(torch.from_numpy(maps), thr)
        found = torch.zeros_like(expected)
        found[m, pos] = True
        assert len(m) == int(expected.sum()) and torch.equal(found, expected)  # the same pixels, each once
