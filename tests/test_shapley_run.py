"""The shapley stage through the command line on a real local Ray, against closed-form values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catalog_schema import Catalog
from conftest import job_toml, write_job
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")

FOLDERS = {"a_bg": [(128, 128, 128)] * 8, "b_warm": [(255, 0, 0)] * 6 + [(0, 0, 255)] * 2, "c_green": [(0, 255, 0)] * 8}

def shapley_job(folder: Path, workers: int = 1, **shapley) -> Path:
    """tests/assets/tiny_models.py:shapley_planted on 8 px single-color images in three classes (FOLDERS)."""
    for name, colors in FOLDERS.items():
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        for i, color in enumerate(colors):
            Image.new("RGB", (8, 8), color).save(folder / "images" / name / f"{i:02d}.png")
    return write_job(folder, job_toml("shapley_planted", ["relu", "fc"], norm=(0.5, 0.5), input_size=8, k=2, patch=8,
                                      shapley={"layers": ["relu"], "permutations_per_round": 4, "rounds": 3, **shapley},
                                      workers=workers))


@pytest.fixture(scope="module")
def valued(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapley")
    assert main(["run", str(shapley_job(folder))]) == 0
    return folder / "catalog"


def test_values_are_the_closed_form_ones(valued):
    table = pd.read_parquet(valued / "shapley.parquet")
    assert table["layer"].tolist() == ["relu"] * 4 and table["unit"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(table["value"], [6 / 24, 8 / 24, 0, 2 / 24], atol=1e-6)
    assert (table["metric"] == "accuracy").all() and (table["target_class"] == -1).all()
    assert (table["samples"] >= 2).all() and (table["ci_low"] <= table["value"]).all()
    units = pd.read_parquet(valued / "units.parquet").set_index(["layer", "unit"])
    assert units.loc[("relu", 1), "shapley"] == pytest.approx(1 / 3)
    assert units.loc[("fc", 0), ["shapley", "shapley_ci_low"]].isna().all()  # not a player
    manifest = json.loads((valued / "manifest.json").read_text())["shapley"]
    assert manifest["v_all"] == 1.0 and manifest["v_none"] == pytest.approx(8 / 24) and manifest["eval_images"] == 24


def test_ablation_check_table(valued, capsys):
    table = Catalog.open(valued).shapley_ablation().set_index(["n", "method"])
    assert set(table.index) == {(1, "shapley"), (1, "single_ablation"), (1, "random"),
                                (2, "shapley"), (2, "single_ablation"), (2, "random")}
    assert table.loc[(1, "shapley"), "units"] == "relu:1" and table.loc[(1, "shapley"), "value"] == pytest.approx(16 / 24)
    assert table.loc[(2, "shapley"), "units"] == "relu:0;relu:1" and table.loc[(2, "shapley"), "drop"] == pytest.approx(14 / 24)
    assert table.loc[(2, "single_ablation"), "value"] == pytest.approx(10 / 24)
    assert main(["describe", str(valued)]) == 0
    out = capsys.readouterr().out
    assert "shapley" in out and "single_ablation" in out and "relu:1" in out


def test_same_values_whatever_the_workers(tmp_path, valued):
    assert main(["run", str(shapley_job(tmp_path, workers=2))]) == 0
    for name in ("shapley", "shapley_ablation"):
        pd.testing.assert_frame_equal(pd.read_parquet(valued / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "catalog" / f"{name}.parquet"), check_exact=True)


def test_class_specific_values(tmp_path):
    assert main(["run", str(shapley_job(tmp_path, target_class=1))]) == 0
    table = pd.read_parquet(tmp_path / "catalog" / "shapley.parquet")
    np.testing.assert_allclose(table["value"], [6 / 8, 0, 0, 2 / 8], atol=1e-6)  # green matters for class 2 only
    assert (table["target_class"] == 1).all()


@pytest.mark.parametrize("setting, expected", [
    ({"target_class": 5}, "stages.shapley.target_class = 5, but data.images has 3 classes"),
    ({"metric": "f1"}, "'stages.shapley.metric' must be \"accuracy\" or \"cross_entropy\""),
    ({"layers": ["conv"]}, "stages.shapley.layers selects conv, which model.layers does not"),
    ({"delta": 2.0}, "'stages.shapley.delta' must be between 0 and 1"),
], ids=["target_class", "metric", "layers", "delta"])
def test_bad_settings_exit_2(tmp_path, capsys, setting, expected):
    job = shapley_job(tmp_path, **setting)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_unlabelled_images_exit_2(tmp_path, capsys):
    job = shapley_job(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (255, 0, 0)).save(flat / f"{i}.png")
    job.write_text(job.read_text().replace('images = "images"', 'images = "flat"'))
    assert main(["run", str(job)]) == 2
    assert "stage 'shapley' needs labelled images" in capsys.readouterr().err


def test_warm_start_from_the_previous_catalog_saves_evaluations(tmp_path, valued):
    """A retrained model (fc's class-0 bias moved: the same closed-form values) starts from the previous samples."""
    import sys
    import torch
    sys.path.insert(0, str(Path(__file__).parent / "assets"))
    from tiny_models import ShapleyPlanted
    model = ShapleyPlanted()
    with torch.no_grad():
        model.fc.bias[0] = 0.1
    runs = {}
    for name, previous in (("cold", None), ("warm", valued)):
        folder = tmp_path / name
        job = shapley_job(folder)
        torch.save(model.state_dict(), folder / "tuned.pt")
        job.write_text(job.read_text().replace("[model]\n", '[model]\nweights = "tuned.pt"\n'))
        assert main(["run", str(job)] + (["--previous", str(previous)] if previous else [])) == 0
        runs[name] = Catalog.open(folder / "catalog")
    cold, warm = (runs[n].manifest["shapley"] for n in ("cold", "warm"))
    assert cold["warm_start"] is None
    info = warm["warm_start"]
    assert info["previous_run_id"] == Catalog.open(valued).manifest["run_id"]
    assert info["units_carried"] == 3  # the dead unit 2 has no activation correlation to match it by
    assert info["weight_of_v"] == 1.0 and info["samples_carried"] > 0 and info["evaluations_saved"] > 0
    assert warm["evaluations"] < cold["evaluations"]
    for run in runs.values():
        np.testing.assert_allclose(run.shapley()["value"], [6 / 24, 8 / 24, 0, 2 / 24], atol=1e-6)
