"""Whole runs through the command line on a real local Ray, checked against planted ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import zarr

from catalog_schema import Catalog
from conftest import RED_IMAGE, RED_YX, dissection_job, make_images, planted_job
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture
def planted_catalog(planted_run) -> Path:
    """conftest's planted catalog (one shard, one worker), made once per session: read only."""
    return planted_run.catalog


def test_planted_red_detector_finds_the_red_pixel(planted_catalog):
    cat = Catalog.open(planted_catalog)
    top = cat.examples("conv1", 0)
    best = top[(top["sign"] == "top") & (top["rank"] == 0)].iloc[0]
    assert best["image_id"] == RED_IMAGE
    assert (best["y"], best["x"]) == RED_YX
    assert best["activation"] == pytest.approx(0.5, abs=1e-6)
    # conv1 is 3x3 with padding 1: the field of (9, 13) is rows 8..10, columns 12..14
    assert (best["box_y0"], best["box_x0"], best["box_y1"], best["box_x1"]) == (8, 12, 11, 15)
    units = cat.units().set_index(["layer", "unit"])
    assert units.loc[("conv1", 0), "act_max"] == pytest.approx(0.5, abs=1e-6)
    assert units.loc[("conv1", 0), "frac_active"] == pytest.approx(1 / (24 * 32 * 32))
    crops, heat = cat.example_images("conv1", 0)
    # the 3x3 field is enlarged to 16px by repeating pixels: the red pixel fills the middle block
    assert (crops[0, 6:10, 6:10] == [255, 0, 0]).all()
    assert (crops[0, :5, :5] != [255, 0, 0]).any(axis=-1).all()
    assert (heat[0, 6:10, 6:10] == 255).all() and heat[0, 0, 0] == 0


def test_catalog_contents_follow_the_contract(planted_catalog):
    units = pd.read_parquet(planted_catalog / "units.parquet")
    assert units.groupby("layer").size().to_dict() == {"conv1": 4, "conv2": 6, "fc": 3}
    for col in ["layer", "unit", "act_mean", "act_max", "frac_active", "dead", "label", "category", "iou",
                "interpretable", "shapley", "shapley_ci_low", "shapley_ci_high", "featvis_activation"]:
        assert col in units.columns
    examples = pd.read_parquet(planted_catalog / "examples.parquet")
    fc = examples[examples["layer"] == "fc"]
    assert (fc[["box_y0", "box_x0", "box_y1", "box_x1"]] == [0, 0, 32, 32]).all().all()  # a Linear unit sees everything
    assert len(examples) == (4 + 6 + 3) * 2 * 4
    images = pd.read_parquet(planted_catalog / "images.parquet")
    assert len(images) == 24 and images["path"].iloc[0] == "a/img_000.png" and set(images["label"]) == {"a", "b"}
    store = zarr.open_group(planted_catalog / "arrays.zarr", mode="r")
    assert store["examples/conv2"].shape == (6, 8, 16, 16, 3)
    assert store["heatmaps/conv2"].shape == (6, 8, 16, 16)
    assert store["mean_maps/conv2"].shape == (6, 16, 16)
    manifest = json.loads((planted_catalog / "manifest.json").read_text())
    assert manifest["stages_done"] == ["activations"]
    assert set(manifest["fingerprints"]["layers"]) == {"conv1", "conv2", "fc"}
    assert not (planted_catalog / ".work").exists()


def _catalog_contents(path: Path) -> dict:
    out = {name: pd.read_parquet(path / f"{name}.parquet") for name in ("units", "examples", "images")}
    store = zarr.open_group(path / "arrays.zarr", mode="r")
    for group in ("examples", "heatmaps", "mean_maps"):
        for layer in ("conv1", "conv2", "fc"):
            out[f"{group}/{layer}"] = store[f"{group}/{layer}"][...]
    return out


def _assert_same_contents(one: Path, other: Path) -> None:
    a, b = _catalog_contents(one), _catalog_contents(other)
    for key in a:
        if isinstance(a[key], pd.DataFrame):
            pd.testing.assert_frame_equal(a[key], b[key], check_exact=True)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_catalog_whatever_the_shards_and_workers(tmp_path, planted_catalog):
    one = planted_catalog  # one shard, one worker
    many = tmp_path / "many"
    shutil.copytree(planted_catalog.parent / "images", many / "images")
    assert main(["run", str(planted_job(many, shard=3, workers=2))]) == 0  # 3 rounds up to whole batches of 4
    _assert_same_contents(one, many / "catalog")


def _model_actors() -> set[str]:
    """Every model actor this Ray has started, alive or not."""
    import ray._private.state

    return {key for key, actor in ray._private.state.actors().items() if actor["ActorClassName"] == "ModelWorker"}


def test_kept_model_actors_start_each_run_afresh(tmp_path, planted_catalog):
    """The session keeps its model actors between runs (runner.keep_workers): a run that follows another
    model's, on another image folder, starts no actor and gives the same catalog as the first run."""
    other, _ = dissection_job(tmp_path / "other")
    assert main(["run", str(other)]) == 0
    again = tmp_path / "again"
    shutil.copytree(planted_catalog.parent / "images", again / "images")
    before = _model_actors()
    assert main(["run", str(planted_job(again, shard=1000))]) == 0
    assert _model_actors() == before
    top = Catalog.open(again / "catalog").examples("conv1", 0)
    best = top[(top["sign"] == "top") & (top["rank"] == 0)].iloc[0]
    assert best["image_id"] == RED_IMAGE and (best["y"], best["x"]) == RED_YX  # the planted red detector, not the other model
    _assert_same_contents(planted_catalog, again / "catalog")


def test_query_and_describe(planted_catalog, capsys):
    assert main(["query", str(planted_catalog), "--layer", "conv1", "--sort", "act_max", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["layer", "unit", "act_mean"] and len(lines) == 3
    assert main(["query", str(planted_catalog), "--format", "json", "--sort", "act_max", "--ascending"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 13 and rows[0]["act_max"] <= rows[-1]["act_max"]
    assert main(["describe", str(planted_catalog)]) == 0
    text = capsys.readouterr().out
    assert "conv2" in text and "24 files, 24 used, 0 skipped" in text and "13 units in 3 layers" in text
    assert "wall time    prepare and plan " in text and "activations " in text


def test_a_run_says_where_its_time_went(planted_run):
    line, = [ln for ln in planted_run.out.splitlines() if "wall time:" in ln]
    steps = {t["step"]: t["seconds"] for t in Catalog.open(planted_run.catalog).manifest["wall_seconds"]}
    assert list(steps) == ["prepare and plan", "ray start", "activations"]  # the stages this job ran, in order
    assert all(seconds >= 0 for seconds in steps.values()) and steps["activations"] > 0
    for step in [*steps, "write"]:
        assert f"{step} " in line, line


def test_query_errors_name_the_problem(planted_catalog, capsys):
    assert main(["query", str(planted_catalog), "--layer", "conv"]) == 2
    err = capsys.readouterr().err
    assert "'conv' is not in catalog" in err and "closest: conv2, conv1" in err
    assert main(["query", str(planted_catalog), "--sort", "nope"]) == 2
    assert "act_max" in capsys.readouterr().err


def test_a_torchvision_model_with_local_weights(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pth")
    make_images(tmp_path / "images", count=6, classes=("a", "b", "c"))
    (tmp_path / "job.toml").write_text(
        '[model]\ntorchvision = "resnet18"\nweights = "r18.pth"\nnum_classes = 3\nlayers = ["layer1", "layer4.1.conv2", "fc"]\n'
        'input_size = 32\n[data]\nimages = "images"\nbatch_size = 4\n[stages.activations]\nk = 2\npatch_size = 8\n'
        '[output]\ncatalog = "catalog"\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    units = pd.read_parquet(tmp_path / "catalog" / "units.parquet")
    assert units.groupby("layer").size().to_dict() == {"layer1": 64, "layer4.1.conv2": 512, "fc": 3}
