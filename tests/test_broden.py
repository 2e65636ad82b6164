"""The Broden reader against hand-written Broden directories: planes, R + 256*G, image-level labels,
the category filter, primary categories by coverage, and malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mini_broden import write_mini_broden
from pipeline.inputs.broden import load_masks, open_broden
from pipeline.errors import UserError
from pipeline.inputs.images import SkippedImage


def _replace_in(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_cells_planes_and_image_level_labels(tmp_path):
    world = write_mini_broden(tmp_path, images=4)
    broden = open_broden(tmp_path)
    assert broden.categories == ("object", "part", "scene")
    assert [(n, l.name, l.category) for n, l in broden.labels.items()] == [
        (1, "redthing", "object"), (2, "wheel", "part"), (3, "redpart", "part"), (4, "greenland", "scene"),
        (5, "grayland", "scene")]
    first, second = broden.images[0], broden.images[1]
    assert first.labels == {"scene": (4,)} and second.labels == {"scene": (5,)}
    assert first.size == (32, 32) and first.mask_size == (16, 16) and first.row == 1
    masks = load_masks(broden, second)
    assert masks["object"].shape == (1, 16, 16) and masks["part"].shape == (2, 16, 16)  # 'a.png;b.png': two planes
    assert masks["scene"].shape == (0, 16, 16)  # image-level only
    assert np.array_equal(masks["object"][0] == 1, world.red[1])
    assert np.array_equal(masks["part"][1] == 3, world.red[1]) and (masks["part"][0][:2, :2] == 2).all()


def test_mask_values_decode_as_r_plus_256_g(tmp_path):
    write_mini_broden(tmp_path, images=2)
    with open(tmp_path / "label.csv", "a") as f:
        f.write("300,bigpart,part(1),1,0.5,\n")
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[3:5, 6:9] = (300 % 256, 300 // 256, 0)
    Image.fromarray(rgb).save(tmp_path / "images" / "000_part_1.png")
    broden = open_broden(tmp_path)
    part = load_masks(broden, broden.images[0])["part"][0]
    assert set(np.unique(part)) == {0, 300} and (part == 300).sum() == 6


def test_category_filter_keeps_its_labels_and_images(tmp_path):
    write_mini_broden(tmp_path, images=4)
    _replace_in(tmp_path / "index.csv", "000.png,train,32,32,16,16,000_object.png,000_part_1.png,4",
                "000.png,train,32,32,16,16,,000_part_1.png,4")
    broden = open_broden(tmp_path, ["object"])
    assert broden.categories == ("object",) and sorted(broden.labels) == [1]
    assert [im.image for im in broden.images] == ["001.png", "002.png", "003.png"]  # 000 has no object data
    assert set(load_masks(broden, broden.images[0])) == {"object"}
    with pytest.raises(UserError, match="unknown category 'texture'"):
        open_broden(tmp_path, ["object", "texture"])


def test_primary_category_by_coverage_in_the_code_tables(tmp_path):
    write_mini_broden(tmp_path, images=2)
    # label.csv's counts say object, but c_part.csv gives `redthing` a larger coverage than c_object.csv
    _replace_in(tmp_path / "label.csv", "redthing,object(2)", "redthing,object(10);part(1)")
    with open(tmp_path / "c_part.csv", "a") as f:
        f.write("3,1,redthing,2,0.9\n")
    assert open_broden(tmp_path).labels[1].category == "part"
    # without category.csv and code tables (a hand-built Broden), label.csv's largest count decides
    for cat in ("object", "part", "scene"):
        (tmp_path / f"c_{cat}.csv").unlink()
    (tmp_path / "category.csv").unlink()
    assert open_broden(tmp_path).labels[1].category == "object"


def test_a_label_pixel_outside_its_primary_category_reads_as_found(tmp_path):
    """NetDissect-Lite counts a label in whatever plane holds it; a label of a category not kept reads as 0."""
    write_mini_broden(tmp_path, images=2)
    Image.fromarray(np.full((16, 16, 3), (2, 0, 0), np.uint8)).save(tmp_path / "images" / "000_object.png")  # wheel (part)
    broden = open_broden(tmp_path)
    assert (load_masks(broden, broden.images[0])["object"] == 2).all()
    only_objects = open_broden(tmp_path, ["object"])
    assert (load_masks(only_objects, only_objects.images[0])["object"] == 0).all()


@pytest.mark.parametrize("edit, expected", [
    (lambda r: _replace_in(r / "label.csv", "number,name,category", "number,nom,category"), "label.csv: missing column(s) name"),
    (lambda r: _replace_in(r / "label.csv", "\n2,wheel", "\n1,wheel"), "label 1 is listed twice"),
    (lambda r: _replace_in(r / "index.csv", ",32,32,16,16,", ",32,32,sixteen,16,"), "row 1 (line 2), column 'sh'"),
    (lambda r: _replace_in(r / "index.csv", "000_object.png", "000_object.jpg"), "neither a label number nor a .png"),
    (lambda r: _replace_in(r / "index.csv", ",4\n", ",4,extra\n"), "row 1 (line 2) has 10 cells"),
    (lambda r: _replace_in(r / "c_part.csv", ",2,wheel", ",x,wheel"), "c_part.csv: row 1 (line 2), column 'number'"),
    (lambda r: _replace_in(r / "category.csv", "scene,", "texture,"),
     "category.csv: row 3 (line 4), column 'name': category 'texture' has no column in index.csv"),
    (lambda r: (r / "c_scene.csv").unlink(), "category.csv: row 3 (line 4), column 'name': category 'scene' has no c_scene.csv"),
    (lambda r: _replace_in(r / "index.csv", ",4\n", ",41\n"), "row 1 (line 2), column 'scene': image-level label 41 is not in label.csv"),
])
def test_malformed_tables_name_file_and_row(tmp_path, edit, expected):
    write_mini_broden(tmp_path, images=2)
    edit(tmp_path)
    with pytest.raises(UserError) as info:
        open_broden(tmp_path)
    assert expected in str(info.value)


def test_bad_masks_are_skips_naming_file_and_row(tmp_path):
    write_mini_broden(tmp_path, images=4)
    Image.new("RGB", (8, 16)).save(tmp_path / "images" / "001_object.png")
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[0, 0] = (77, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "images" / "002_object.png")
    (tmp_path / "images" / "003_part_1.png").write_bytes(b"not a png")
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "000_object.png", format="JPEG")  # a mask is a PNG
    broden = open_broden(tmp_path)
    expected = {0: "000_object.png (object) of index.csv row 1: unreadable mask (not a PNG file)",
                1: "001_object.png (object) of index.csv row 2: mask is 16x8, index.csv says sh x sw = 16x16",
                2: "label number(s) 77 not in label.csv",
                3: "003_part_1.png (part) of index.csv row 4: unreadable mask (not a PNG file)"}
    for index, message in expected.items():
        with pytest.raises(SkippedImage) as info:
            load_masks(broden, broden.images[index])
        assert message in str(info.value)
