"""The concept world: Broden-format files checked against the drawn pixels and the format's rules."""

from __future__ import annotations

import csv
import filecmp
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.concepts import COLORS, make_concept_world
from pipeline.errors import UserError

HEADER = "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture"
PIXEL_CATEGORIES = ("color", "object", "part", "material")
NOISE = 8  # the documented bound on a pixel's deviation from its color's nominal RGB

# The world's specification, written out independently of the drawing code.
PART_OF = {
    "roof": {"house"}, "door": {"house"}, "window": {"house", "car"}, "body": {"house", "car", "fish", "cup"},
    "trunk": {"tree"}, "crown": {"tree"}, "fruit": {"tree"}, "wheel": {"car"}, "hub": {"car"},
    "pole": {"lamp"}, "shade": {"lamp"}, "base": {"lamp"}, "hull": {"boat"}, "mast": {"boat"}, "sail": {"boat"},
    "top": {"table"}, "leg": {"table"}, "stem": {"flower"}, "petal": {"flower"}, "center": {"flower"},
    "tail": {"fish"}, "eye": {"fish"}, "handle": {"cup"},
}
PART_COLOR = {"wheel": "black", "trunk": "brown", "stem": "green"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def decode_mask(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    assert (rgb[..., 2] == 0).all(), f"{path.name}: blue channel must be 0"
    return rgb[..., 0] + 256 * rgb[..., 1]


class World:
    """The files of one generated world, parsed the way a Broden reader parses them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = read_csv(root / "index.csv")
        self.labels = {int(r["number"]): r for r in read_csv(root / "label.csv")}
        self.label_cats = {n: dict(re.match(r"^([^(]*)\(([^)]*)\)$", part).groups() for part in r["category"].split(";"))
                           for n, r in self.labels.items()}
        self.number = {r["name"]: n for n, r in self.labels.items()}

    def name(self, number: int) -> str:
        return self.labels[number]["name"]

    def planes(self, row: dict[str, str], cat: str) -> list[np.ndarray]:
        return [decode_mask(self.root / "images" / item) for item in row[cat].split(";") if item]

    def image(self, row: dict[str, str]) -> np.ndarray:
        return np.asarray(Image.open(self.root / "images" / row["image"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    out = tmp_path_factory.mktemp("cw") / "world"
    summary = make_concept_world(out, images=120, size=64, seed=3)
    assert summary.out == out and summary.images == 120 and summary.size == 64
    return World(out)


def test_index_header_and_rows(world: World) -> None:
    first = (world.root / "index.csv").read_text(encoding="utf-8").splitlines()[0]
    assert first == HEADER
    assert len(world.index) == 120
    for row in world.index:
        assert (row["ih"], row["iw"], row["sh"], row["sw"]) == ("64", "64", "32", "32")
        assert row["split"] in ("train", "val")
        img = world.image(row)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        for cat in PIXEL_CATEGORIES:
            for item in filter(None, row[cat].split(";")):
                assert item.endswith(".png") and (world.root / "images" / item).is_file()
                assert Image.open(world.root / "images" / item).size == (32, 32)
        for cat in ("scene", "texture"):
            assert row[cat] and all(item.isdigit() for item in row[cat].split(";"))
    assert Counter(r["split"] for r in world.index) == {"train": 96, "val": 24}


def test_label_tables_are_broden_style(world: World) -> None:
    numbers = sorted(world.labels)
    assert numbers == list(range(1, len(numbers) + 1))  # dense, 0 not listed
    assert len({r["name"] for r in world.labels.values()}) == len(numbers)
    for r in world.labels.values():
        assert re.match(r"^\d+$", r["frequency"]) and re.match(r"^\d+\.\d*$", r["coverage"])
    categories = read_csv(world.root / "category.csv")
    assert [c["name"] for c in categories] == ["color", "object", "part", "material", "scene", "texture"]
    for c in categories:
        rows = read_csv(world.root / f"c_{c['name']}.csv")
        assert list(rows[0]) == ["code", "number", "name", "frequency", "coverage"]
        assert [int(r["code"]) for r in rows] == list(range(1, len(rows) + 1))  # dense codes from 1
        members = [int(r["number"]) for r in rows]
        assert (int(c["first"]), int(c["last"]), int(c["count"])) == (min(members), max(members), len(members))
        for r in rows:
            n = int(r["number"])
            assert r["name"] == world.name(n) and c["name"] in world.label_cats[n]
            assert int(r["frequency"]) == int(world.label_cats[n][c["name"]])
    assert {len(read_csv(world.root / f"c_{c['name']}.csv")) for c in categories} >= {6, 7}


def test_mask_labels_exist_in_their_category(world: World) -> None:
    for row in world.index:
        for cat in PIXEL_CATEGORIES:
            for plane in world.planes(row, cat):
                for n in set(np.unique(plane).tolist()) - {0}:
                    assert n in world.labels and cat in world.label_cats[n], (row["image"], cat, n)
        for cat in ("scene", "texture"):
            for item in row[cat].split(";"):
                assert cat in world.label_cats[int(item)]


def test_color_masks_match_the_pixels(world: World) -> None:
    palette = np.array(list(COLORS.values()))
    gaps = np.abs(palette[:, None] - palette[None]).max(-1) + np.eye(len(palette), dtype=int) * 999
    assert gaps.min() > 2 * NOISE  # nominal colors are told apart despite the noise
    for row in world.index:
        (plane,) = world.planes(row, "color")
        assert (plane > 0).all()  # every pixel has a color
        pixels = world.image(row)[0::2, 0::2].astype(int)  # mask (i, j) describes pixel (2i, 2j)
        nominal = np.array([COLORS[world.name(n)] for n in plane.ravel()]).reshape(pixels.shape)
        assert np.abs(pixels - nominal).max() <= NOISE, row["image"]


def test_objects_parts_and_materials_are_consistent(world: World) -> None:
    seen_two_part_planes = False
    for row in world.index:
        (color,) = world.planes(row, "color")
        obj = world.planes(row, "object")[0] if row["object"] else np.zeros((32, 32), int)
        (material,) = world.planes(row, "material")
        parts = world.planes(row, "part")
        assert ((obj > 0) != (material > 0)).all()  # each pixel: an object or a background material
        if parts:
            assert (obj[parts[0] > 0] > 0).all()
            for p, o in zip(parts[0][parts[0] > 0], obj[parts[0] > 0]):
                assert world.name(o) in PART_OF[world.name(p)]
        if len(parts) == 2:
            seen_two_part_planes = True
            assert (parts[0][parts[1] > 0] > 0).all()  # a part's part lies on a part
            for p, o in zip(parts[1][parts[1] > 0], obj[parts[1] > 0]):
                assert world.name(o) in PART_OF[world.name(p)]
        if parts:
            top = parts[0] * (parts[1] == 0) if len(parts) == 2 else parts[0]  # visible level-1 part
            for part, col in PART_COLOR.items():
                at = top == world.number[part]
                assert (color[at] == world.number[col]).all(), (row["image"], part)
    assert seen_two_part_planes


def test_frequency_and_coverage_recount(world: World) -> None:
    images, cover = Counter(), defaultdict(float)
    for row in world.index:
        if row["object"]:
            (obj,) = world.planes(row, "object")
            for n in set(np.unique(obj).tolist()) - {0}:
                images[n] += 1
                cover[n] += float((obj == n).mean())
    for r in read_csv(world.root / "c_object.csv"):
        n = int(r["number"])
        assert int(r["frequency"]) == images[n]
        if images[n]:
            assert float(r["coverage"]) == pytest.approx(cover[n] / images[n], abs=2e-6)
    scene_counts = Counter(int(r["scene"]) for r in world.index)
    for n, count in scene_counts.items():
        assert world.labels[n]["frequency"] == str(count) and world.labels[n]["coverage"] == "1.000000"


def test_scene_labels_match_the_imagefolder_view(world: World) -> None:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(world.root / "scenes")
    assert len(folder) == len(world.index)
    by_name = {Path(p).name: folder.classes[c] for p, c in folder.samples}
    for row in world.index:
        scene = world.name(int(row["scene"]))
        assert by_name[row["image"]] == scene
        assert filecmp.cmp(world.root / "scenes" / scene / row["image"], world.root / "images" / row["image"], shallow=False)
    assert json.loads((world.root / "world.json").read_text())["summary"]["scene_counts"] == dict(Counter(by_name.values()))


def test_scene_content_depends_on_the_scene(world: World) -> None:
    objects, materials = defaultdict(Counter), defaultdict(Counter)
    for row in world.index:
        scene = world.name(int(row["scene"]))
        if row["object"]:
            objects[scene].update(world.name(n) for n in set(np.unique(world.planes(row, "object")[0]).tolist()) - {0})
        materials[scene].update(world.name(n) for n in set(np.unique(world.planes(row, "material")[0]).tolist()) - {0})
    assert objects["street"]["car"] > objects["forest"]["car"] + 5
    assert objects["forest"]["tree"] > objects["kitchen"]["tree"] + 5
    assert objects["kitchen"]["cup"] + objects["kitchen"]["table"] > 10
    assert materials["beach"]["sand"] > materials["street"]["sand"] + 5
    assert materials["harbor"]["water"] > materials["forest"]["water"] + 5
    assert len({frozenset(m) for m in materials.values()}) > 1


def test_multi_item_cells_exist(world: World) -> None:
    assert any(len(r["part"].split(";")) == 2 for r in world.index)
    assert any(len(r["texture"].split(";")) >= 2 for r in world.index)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_prefix_stable(tmp_path: Path) -> None:
    a = _tree(make_concept_world(tmp_path / "a", images=20, size=32, seed=5).out)
    b = _tree(make_concept_world(tmp_path / "b", images=20, size=32, seed=5).out)
    assert a == b
    c = _tree(make_concept_world(tmp_path / "c", images=20, size=32, seed=6).out)
    assert a["images/00000.png"] != c["images/00000.png"] and a["index.csv"] != c["index.csv"]
    short = _tree(make_concept_world(tmp_path / "d", images=10, size=32, seed=5).out)
    for name, data in short.items():
        if name.startswith("images/"):
            assert a[name] == data, name
    assert sum(n.startswith("images/") and n.count("_") == 0 for n in short) == 10
    assert not list(tmp_path.glob("*.tmp-*"))


def test_existing_world_is_reused_or_refused(tmp_path: Path) -> None:
    out = tmp_path / "w"
    make_concept_world(out, images=6, size=32, seed=0)
    marker = out / "images" / "00000.png"
    stamp = marker.stat().st_mtime_ns
    again = make_concept_world(out, images=6, size=32, seed=0)
    assert again.images == 6 and again.scene_counts == {s: 1 for s in again.scene_classes}
    assert marker.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=re.escape(str(out))):
        make_concept_world(out, images=7, size=32, seed=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a world")
    with pytest.raises(UserError, match="delete it|Delete it"):
        make_concept_world(tmp_path / "other", images=6, size=32, seed=0)
    with pytest.raises(UserError):
        make_concept_world(tmp_path / "tiny", images=6, size=8, seed=0)
