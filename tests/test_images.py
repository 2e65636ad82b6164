"""Listing and decoding images: labels, sampling, and every Pillow mode turned into the right RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.inputs.images import SkippedImage, list_images, load_image


def test_imagefolder_labels_and_seeded_limit(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(5):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / ".hidden").mkdir()
    full = list_images(tmp_path)
    assert full.classes == ("cat", "dog") and len(full.records) == 10
    assert (full.records[5].path, full.records[5].label, full.records[5].label_index) == ("dog/0.png", "dog", 1)
    a, b = list_images(tmp_path, limit=4, seed=0), list_images(tmp_path, limit=4, seed=0)
    assert a == b and [r.image_id for r in a.records] == [0, 1, 2, 3]
    assert [r.path for r in a.records] == sorted(r.path for r in a.records)
    others = {tuple(r.path for r in list_images(tmp_path, limit=4, seed=s).records) for s in range(5)}
    assert len(others) > 1  # the sample depends on the seed


def test_flat_folder_has_no_labels(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    rec = list_images(tmp_path).records[0]
    assert rec.label is None and rec.label_index == -1
    with pytest.raises(UserError, match="is not a directory"):
        list_images(tmp_path / "x.png")


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),  # 16-bit white stays white
    (lambda: Image.fromarray(np.full((8, 8), 32896, np.uint16)), (128, 128, 128)),  # 16-bit mid-gray
    (lambda: Image.fromarray(np.full((8, 8), 77, np.uint8), mode="L"), (77, 77, 77)),
    (lambda: Image.fromarray(np.full((8, 8, 4), (10, 20, 30, 255), np.uint8), mode="RGBA"), (10, 20, 30)),
    (lambda: Image.fromarray(np.full((8, 8, 3), (200, 40, 0), np.uint8)).convert("P", palette=Image.ADAPTIVE), (200, 40, 0)),
])
def test_modes_become_rgb(tmp_path, make, expected):
    make().save(tmp_path / "img.png")
    pixels = load_image(tmp_path / "img.png", 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[4, 4]) == expected


def test_resize_short_side_then_center_crop(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 6:34] = 255  # a little more than the middle half, which the center crop keeps
    Image.fromarray(arr).save(tmp_path / "wide.png")
    pixels = load_image(tmp_path / "wide.png", 10)
    assert pixels.shape == (10, 10, 3) and pixels.min() == 255
    gray = load_image(tmp_path / "wide.png", 10, channels=1)
    assert gray.shape == (10, 10, 1)


def test_unreadable_files_raise_skips_with_a_reason(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(SkippedImage, match="UnidentifiedImageError"):
        load_image(tmp_path / "bad.jpg", 8)
