"""Hostile and broken input: decompression bombs, odd pixel modes, truncated and fake files, folders named
like images, catalogs pointed into the data, checkpoints and model archives that would run code, and a
source audit (no shell commands, no unsafe loads). What tests/test_bad_input.py already covers is not repeated."""

from __future__ import annotations

import argparse
import ast
import io
import json
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from conftest import make_images, planted_job, planted_toml, write_job
from mini_broden import write_mini_broden
from pipeline.inputs.batches import Preprocess
from pipeline.inputs.broden import open_broden
from pipeline.cli import main
from pipeline.inputs.concept_batches import iter_concept_batches
from pipeline.job.config import ModelConfig
from pipeline.job.load import load_job
from pipeline.registry import STAGES
from pipeline.errors import UserError
from pipeline.inputs.images import SkippedImage, list_images, load_image
from pipeline.inputs.models import build_model, recipe_from_config

REPO = Path(__file__).resolve().parents[1]
LIMIT = f"{Image.MAX_IMAGE_PIXELS:,}"  # Pillow's default, as the Ray workers see it


def bomb_png(path: Path, width: int, height: int) -> None:
    """A real, valid 1-bit PNG declaring width x height pixels; all black, so it compresses to a few KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _run(job: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["run", str(job), *extra])
    return code, capsys.readouterr().err


# --- images: bombs, fakes, truncation, folders named like images -------------------------------------------

@pytest.mark.usefixtures("ray_local")
def test_bombs_fakes_and_truncated_files_are_recorded_skips_with_relative_paths(tmp_path, capsys):
    images = tmp_path / "images"
    make_images(images, count=6, classes=())
    bomb_png(images / "bomb.png", 20000, 20000)  # 4.5x Pillow's limit: Pillow itself raises
    bomb_png(images / "near_bomb.png", 10000, 10000)  # 1.1x: Pillow only warns; the pipeline still refuses it
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(images / "photo.jpg", quality=90)
    whole = (images / "photo.jpg").read_bytes()
    (images / "photo.jpg").unlink()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "letter.jpg").write_text("Dear reader, this is not a JPEG.")
    (images / "folder.png").mkdir()
    (images / "folder.png" / "inside.png").write_bytes(b"")  # never reached: the folder itself is the entry
    job = write_job(tmp_path, planted_toml())

    assert main(["run", str(job)]) == 0
    assert "skipped 5" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "catalog" / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["data"]["skipped"]}
    assert sorted(reasons) == ["bomb.png", "cut.jpg", "folder.png", "letter.jpg", "near_bomb.png"]
    assert manifest["data"]["used"] == 6
    for name in ("bomb.png", "near_bomb.png"):
        assert "PIL.Image.MAX_IMAGE_PIXELS" in reasons[name] and LIMIT in reasons[name] and "not decoded" in reasons[name]
    assert "400,000,000 pixels" in reasons["bomb.png"] and "10000x10000" in reasons["near_bomb.png"]
    assert "truncated" in reasons["cut.jpg"].lower()
    assert "not an image" in reasons["letter.jpg"] and "folder" in reasons["folder.png"]

    table = pd.read_parquet(tmp_path / "catalog" / "images.parquet")
    assert sorted(table.loc[table["skipped"], "path"]) == sorted(reasons)
    # paths are relative to the data root, and no reason leaks where the data lives
    assert not any(p.startswith("/") or ".." in p.split("/") for p in table["path"])
    assert all((images / p).exists() for p in table["path"])
    assert not any(str(tmp_path) in r for r in table["skip_reason"].dropna())
    assert not any(str(tmp_path) in s["reason"] or str(tmp_path) in s["path"] for s in manifest["data"]["skipped"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing the run imported turned it on


@pytest.mark.parametrize("filter_", ["default", "error", "ignore"])
def test_a_bomb_between_one_and_two_times_the_limit_is_skipped_whatever_the_warning_filter(tmp_path, filter_):
    """Pillow warns (DecompressionBombWarning) between 1x and 2x MAX_IMAGE_PIXELS and raises only beyond. The
    pipeline's choice: the limit is MAX_IMAGE_PIXELS itself, so such a file is a skip with the same reason
    whether warnings are ignored, shown, or errors (as under `python -W error`); it is never decoded."""
    bomb_png(tmp_path / "near.png", 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter(filter_)
        with pytest.raises(SkippedImage, match=r"MAX_IMAGE_PIXELS = 89,478,485, so it was not decoded"):
            load_image(tmp_path / "near.png", 16)


def test_bombs_in_a_broden_set_are_skips_naming_the_file_and_row(tmp_path):
    write_mini_broden(tmp_path, images=4)
    bomb_png(tmp_path / "images" / "001.png", 20000, 20000)  # a concept image
    bomb_png(tmp_path / "images" / "002_object.png", 10000, 10000)  # a mask (also of the wrong size: the bomb is found first)
    broden = open_broden(tmp_path)
    skipped: list[tuple[int, str]] = []
    batches = list(iter_concept_batches(broden, range(4), Preprocess(32, (0.5,) * 3, (0.5,) * 3, 4), skipped))
    assert sorted(i for b in batches for i in b.image_ids.tolist()) == [0, 3]
    reasons = dict(skipped)
    assert reasons[1].startswith("001.png (index.csv row 2): its header declares 400,000,000 pixels")
    assert "mask 002_object.png (object) of index.csv row 3" in reasons[2] and "10000x10000" in reasons[2]
    assert all("MAX_IMAGE_PIXELS" in r and str(tmp_path) not in r for r in reasons.values())


# --- pixel modes ----------------------------------------------------------------------------------------------

def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 40, 0] + [0] * 762)
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize("name, make, expected", [
    ("la.png", lambda: Image.fromarray(np.full((8, 8, 2), (77, 9), np.uint8), mode="LA"), (77, 77, 77)),
    ("trans.png", _palette_with_transparency, (200, 40, 0)),
    ("one.png", lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (8, 8), (0, 255, 0, 0)), (255, 0, 255)),  # magenta ink only
    ("cmyk.tif", lambda: Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),  # cyan ink only
    ("gray16.tif", lambda: Image.fromarray(np.full((8, 8), 32896, np.uint16)), (128, 128, 128)),
    ("unit.tif", lambda: Image.fromarray(np.full((8, 8), 0.25, np.float32)), (64, 64, 64)),  # float in [0, 1]
    ("int32.tif", lambda: Image.fromarray(np.full((8, 8), 32896, np.int32)), (128, 128, 128)),  # 16-bit range in mode I
    ("lab.tif", lambda: Image.new("LAB", (8, 8), (128, 128, 128)), (119, 119, 119)),  # L* 50: mid gray
])
def test_more_modes_become_the_right_rgb(tmp_path, name, make, expected):
    make().save(tmp_path / name)
    pixels = load_image(tmp_path / name, 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[4, 4].astype(int) - expected).max() <= 1


def test_float_images_outside_0_1_are_stretched_not_clipped_to_white(tmp_path):
    ramp = np.tile(np.linspace(0, 1000, 16, dtype=np.float32), (16, 1))
    ramp[0, 0] = np.nan
    Image.fromarray(ramp).save(tmp_path / "depth.tif")
    pixels = load_image(tmp_path / "depth.tif", 16, channels=1)[..., 0]
    assert pixels[8, 0] == 0 and pixels[8, 15] == 255  # the range is stretched ...
    assert 100 < pixels[8, 8] < 160  # ... linearly, so the middle is mid-gray, not white
    assert pixels[0, 0] == 0  # NaN reads as 0


# --- listing: folders named like images, loose images beside class folders ------------------------------------

def test_loose_images_beside_class_folders_are_refused_naming_them(tmp_path, capsys):
    make_images(tmp_path / "images", count=6)  # class folders a/ and b/
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "stray.png")
    (tmp_path / "images" / "README.txt").write_text("not an image, and ignored as torchvision does")
    job = write_job(tmp_path, planted_toml())
    code, err = _run(job, capsys)
    assert code == 2 and "Traceback" not in err
    assert "class sub-folders (a, b) and 1 image file(s) beside them (stray.png)" in err and "Move them into a class folder" in err
    (tmp_path / "images" / "stray.png").unlink()
    assert [r.path for r in list_images(tmp_path / "images").records][:1] == ["a/img_000.png"]


def test_a_folder_named_like_an_image_is_an_entry_not_a_class(tmp_path):
    make_images(tmp_path, count=4, classes=())
    (tmp_path / "scan.jpg").mkdir()
    listed = list_images(tmp_path)
    assert listed.classes == () and [r.path for r in listed.records][-1] == "scan.jpg"
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "x.png")
    with pytest.raises(UserError, match="img_000.png"):  # the flat images would otherwise vanish silently
        list_images(tmp_path)


# --- job files: where the catalog may go, types ----------------------------------------------------------------

@pytest.mark.parametrize("catalog, expected", [
    ("images", "is the data set data.images"),
    ("images/out", "is inside the data set data.images"),
    ("concepts/out", "is inside the data set concepts.broden"),
    ("link/out", "is inside the data set data.images"),  # through a symlink to the images
])
def test_a_catalog_inside_the_data_is_refused(tmp_path, capsys, catalog, expected):
    job = planted_job(tmp_path)
    (tmp_path / "concepts").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    job.write_text(job.read_text().replace('catalog = "catalog"', f'catalog = "{catalog}"') + '[concepts]\nbroden = "concepts"\n')
    before = sorted(p.name for p in (tmp_path / "images").rglob("*"))
    code, err = _run(job, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"[output] catalog = {(tmp_path / catalog).resolve()} {expected}" in err and "Choose a catalog path outside" in err
    assert sorted(p.name for p in (tmp_path / "images").rglob("*")) == before


def test_a_catalog_holding_the_data_is_refused(tmp_path, capsys):
    make_images(tmp_path / "out" / "images", count=4)
    job = write_job(tmp_path, planted_toml().replace('"images"', '"out/images"')
                    .replace('catalog = "catalog"', 'catalog = "out"'))
    code, err = _run(job, capsys)
    assert code == 2 and f"[output] catalog = {(tmp_path / 'out').resolve()} holds the data set data.images" in err
    assert "Choose a catalog path beside the data" in err


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace('layers = ["conv1", "conv2", "fc"]', 'layers = "conv1"'), "'model.layers' must be a list of strings"),
    (lambda t: t.replace("layers =", "trust_weights = 'yes'\nlayers ="), "'model.trust_weights' must be true or false, got 'yes'"),
    (lambda t: "model = 'resnet18'\n" + t.replace("[model]", "[modelx]"), "job key [model] must be a table"),
])
def test_wrong_shapes_of_job_keys_name_the_key(tmp_path, capsys, edit, expected):
    job = planted_job(tmp_path)
    job.write_text(edit(job.read_text()))
    code, err = _run(job, capsys)
    assert code == 2 and expected in err and "Traceback" not in err


# --- code in model files ---------------------------------------------------------------------------------------

class _OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a hostile pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    job = planted_job(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "payload": _OpensAFile(marker)}, tmp_path / "w.pt")
    job.write_text(job.read_text().replace("layers =", 'weights = "w.pt"\nlayers ='))
    code, err = _run(job, capsys)
    assert code == 2 and "set [model] trust_weights = true" in err and "only if you trust the file" in err
    assert not marker.exists()


@pytest.mark.usefixtures("ray_local")
def test_a_checkpoint_needing_pickle_loads_when_the_job_trusts_it(tmp_path, capsys):
    """A training checkpoint with an argparse.Namespace beside the state_dict: refused by weights_only, used with trust."""
    job = planted_job(tmp_path)
    state = build_model(recipe_from_config(load_job(job, STAGES).model)).state_dict()
    state["fc.weight"] = torch.zeros(3, 6)
    state["fc.bias"] = torch.tensor([7.0, 8.0, 9.0])  # fc then outputs exactly its bias
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1, epochs=90)}, tmp_path / "ckpt.pth")
    text = job.read_text().replace("layers =", 'weights = "ckpt.pth"\nlayers =')
    job.write_text(text)
    code, err = _run(job, capsys)
    assert code == 2 and "argparse.Namespace" in err and "trust_weights = true" in err
    job.write_text(text.replace("layers =", "trust_weights = true\nlayers ="))
    code, _ = _run(job, capsys)
    assert code == 0
    units = pd.read_parquet(tmp_path / "catalog" / "units.parquet")
    fc = units[units["layer"] == "fc"].sort_values("unit")
    assert fc["act_max"].round(3).tolist() == [7.0, 8.0, 9.0]  # the checkpoint's weights were the ones used


def _archive_with_pickled_weight(path: Path, payload: object) -> None:
    """A torch.export archive whose first weight is stored as a pickle (as torch does for tensor subclasses)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU())
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    plain = io.BytesIO()
    torch.export.save(program, plain)
    pickled = io.BytesIO()
    torch.save(payload, pickled)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as out:
        config_name = next(n for n in src.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(src.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename.endswith(f"data/weights/{first['path_name']}"):
                data = pickled.getvalue()
            out.writestr(info, data)


def test_a_model_archive_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    """torch.export.load unpickles such parts with weights_only=False; untrusted, the pipeline never lets it."""
    marker = tmp_path / "pwned"
    _archive_with_pickled_weight(tmp_path / "model.pt2", _OpensAFile(marker))
    with pytest.raises(UserError, match=r"refused.*trust_weights = true"):
        build_model(recipe_from_config(ModelConfig(archive=tmp_path / "model.pt2")))
    assert not marker.exists()


def test_an_archive_with_compiled_code_or_pickled_objects_is_refused_by_name(tmp_path):
    source = tmp_path / "plain.pt2"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), source)
    for extra, what in (("data/aotinductor/model/model.so", "compiled native code"),
                        ("data/constants/opaque_obj_0", "a pickled Python object")):
        target = tmp_path / f"{what[:8].strip()}.pt2"
        target.write_bytes(source.read_bytes())
        with zipfile.ZipFile(target, "a") as archive:
            root = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{root}/{extra}", b"\0")
        with pytest.raises(UserError, match=f"holds {what}"):
            build_model(recipe_from_config(ModelConfig(archive=target)))
    assert isinstance(build_model(recipe_from_config(ModelConfig(archive=source))), torch.nn.Module)


def test_a_factory_that_raises_names_its_file_and_line(tmp_path, capsys):
    job = planted_job(tmp_path)
    (tmp_path / "broken.py").write_text("def build():\n    raise ValueError('no such width: 13')\n")
    job.write_text(job.read_text().replace("tiny_models.py:planted", "broken.py:build"))
    code, err = _run(job, capsys)
    assert code == 2 and "Traceback" not in err
    assert "model.factory" in err and "ValueError: no such width: 13 (at broken.py line 2)" in err


# --- source audit ----------------------------------------------------------------------------------------------

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_shell_commands_and_no_unsafe_loads_in_the_source():
    """No shell is ever started (so no command is built from user strings), every torch.load states
    weights_only, and Pillow's LOAD_TRUNCATED_IMAGES is never switched on."""
    problems = []
    files = sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "catalog_schema").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        text = path.read_text()
        where = path.relative_to(REPO)
        for node, name in _calls(ast.parse(text)):
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput") or name.startswith(("os.exec", "os.spawn")):
                problems.append(f"{where}:{node.lineno} calls {name}")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                problems.append(f"{where}:{node.lineno} passes shell= to {name}")
            if name == "torch.load" and "weights_only" not in keywords:
                problems.append(f"{where}:{node.lineno} torch.load without weights_only")
            if name == "torch.load" and isinstance(keywords["weights_only"], ast.Constant) and keywords["weights_only"].value is False:
                problems.append(f"{where}:{node.lineno} torch.load(weights_only=False)")
        if "LOAD_TRUNCATED_IMAGES" in text:
            problems.append(f"{where} mentions LOAD_TRUNCATED_IMAGES")
    assert problems == []


def test_out_inside_the_data_is_refused_too(tmp_path, capsys):
    job = planted_job(tmp_path)
    code = main(["run", str(job), "--out", str(tmp_path / "images" / "a" / "catalog")])
    err = capsys.readouterr().err
    assert code == 2 and "--out = " in err and "is inside the data set data.images" in err
    assert not (tmp_path / "images" / "a" / "catalog").exists()
