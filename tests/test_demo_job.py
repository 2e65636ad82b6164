"""The demo's path through [prepare]: concept world and model made on first run, reused on the second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog_schema import Catalog
from pipeline.cli import main
from pipeline.demo.world_tensors import segmenter_labels

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"


@pytest.mark.usefixtures("ray_local")
def test_demo_job_prepares_its_inputs_then_reuses_them(tmp_path, capsys):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    text = DEMO.read_text().replace("images = 1000", "images = 60").replace("epochs = 20", "epochs = 2")
    text = text.replace("steps = 96", "steps = 4").replace("msr_samples = 2048", "msr_samples = 16")  # every stage, briefly
    text = text.replace("steps = 600", "steps = 20").replace("features = 256", "features = 32")
    text = text.replace("k = 16", "k = 2").replace("patch_size = 48", "patch_size = 16")  # few, small crops and projections
    text = text.replace("eval_images = 256", "eval_images = 24").replace("batch_units = 32", "batch_units = 32\nsize = 16")
    for setting in ("steps = 4", "steps = 20", "features = 32", "msr_samples = 16", "k = 2", "patch_size = 16", "eval_images = 24", "size = 16"):
        assert setting in text, setting
    (jobs / "demo.toml").write_text(text)
    assert main(["run", str(jobs / "demo.toml")]) == 0
    first = capsys.readouterr().out
    assert "concept world: 60 images of 64px" in first and "demo model: trained in" in first
    manifest = json.loads((tmp_path / "catalogs" / "demo" / "manifest.json").read_text())
    model = manifest["prepared"]["demo_model"]
    assert not model["cached"] and 0.0 <= model["heldout_accuracy"] <= 1.0
    assert manifest["data"]["classes"] == sorted(manifest["data"]["classes"]) and len(manifest["data"]["classes"]) == 6
    assert [layer["name"] for layer in manifest["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv4..features", "fc"]
    assert manifest["stages_done"] == ["dictionary", "activations", "featvis", "dissection", "shapley", "similarity",
                                       "connections", "unit_map", "class_pages", "attribution"]
    catalog = Catalog.open(tmp_path / "catalogs" / "demo")  # importance: every conv unit, every class
    units = catalog.units()
    assert units.loc[units["layer"] != "fc", "shapley"].notna().sum() == 144 == manifest["shapley"]["players"]
    assert manifest["shapley"]["estimators"] == ["msr"] and units["banzhaf"].isna().all()
    by_class = catalog.importance_by_class()
    assert len(by_class) == 144 * 6 and set(by_class["class_name"]) == set(manifest["data"]["classes"])
    features = units[units["layer"] == "conv4..features"]  # the dictionary's, dissected, not rendered (featvis layers)
    assert len(features) == 32 and features["featvis_activation"].isna().all() and features["iou"].notna().all()
    assert units.loc[~units["dead"].astype(bool), "map_x"].notna().all()  # every unit with a vector is on the map
    classes = catalog.classes()  # a page per class: accuracy, IBD on conv4 (the layer fc reads)
    assert len(classes) == 6 and classes["images"].sum() == manifest["data"]["used"]
    assert manifest["class_pages"]["layer"] == "conv4" and classes["ibd_residual"].between(0, 1).all()
    convs = units[units["layer"].isin(["conv1", "conv2", "conv3", "conv4"])]  # attribution: every conv unit's field
    assert convs["erf_size"].notna().all() and (convs["erf_size"] <= convs["rf_size"] + 1e-6).all()
    checked = manifest["attribution"]["layers"]["conv4"]["sanity"]  # every method on conv4's checked examples
    assert set(checked) == {"saliency", "gradcam", "deconvnet", "guided"} and all(v["examples"] > 0 for v in checked.values())
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "catalogs" / "demo")]) == 0
    assert "neurons vs features" in capsys.readouterr().out

    assert main(["run", str(jobs / "demo.toml")]) == 0
    assert "demo model: cached" in capsys.readouterr().out


def test_make_concepts_command(tmp_path, capsys):
    assert main(["make-concepts", str(tmp_path / "world"), "--images", "6", "--size", "32", "--seed", "3"]) == 0
    rows = (tmp_path / "world" / "index.csv").read_text().strip().splitlines()
    assert rows[0].startswith("image,split,ih,iw,sh,sw,color,object,part,material,scene,texture") and len(rows) == 7
    assert main(["make-concepts", str(tmp_path / "other"), "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err


GENERATOR_DEMO = DEMO.parent / "demo_generator.toml"


@pytest.mark.usefixtures("ray_local")
def test_generator_demo_trains_its_decoder_and_segmenter_then_dissects_and_intervenes(tmp_path, capsys):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    text = GENERATOR_DEMO.read_text().replace("images = 1000", "images = 40").replace("epochs = 60", "epochs = 2")
    text = text.replace("segmenter_epochs = 30", "segmenter_epochs = 2").replace("count = 1024", "count = 32")
    text = text.replace("max_units = 20", "max_units = 3").replace("images = 16", "images = 4")
    text = text.replace("steps = 128", "steps = 4")
    for setting in ("images = 40", "epochs = 2", "segmenter_epochs = 2", "count = 32", "max_units = 3", "images = 4",
                    "steps = 4"):
        assert setting in text, setting
    (jobs / "demo_generator.toml").write_text(text)
    assert main(["run", str(jobs / "demo_generator.toml")]) == 0
    first = capsys.readouterr().out
    assert "demo generator: trained in" in first and "demo segmenter: trained in" in first
    manifest = json.loads((tmp_path / "catalogs" / "demo_generator" / "manifest.json").read_text())
    made = manifest["prepared"]
    assert made["generated_sample"]["images"] == 32 and made["generated_sample"]["size"] == 32
    labels = {name for name, _ in segmenter_labels()}
    assert made["demo_generator"]["segmenter"]["heldout_iou"] and set(made["demo_generator"]["segmenter"]["heldout_iou"]) <= labels
    assert manifest["stages_done"] == ["activations", "featvis", "dissection", "similarity", "unit_map", "interventions"]
    catalog = Catalog.open(tmp_path / "catalogs" / "demo_generator")
    assert len(catalog.units()) == 64 + 32 + 16 and catalog.units()["featvis_activation"].notna().all()
    table = catalog.interventions()
    assert set(table["intervention"]) == {"ablate", "insert"} and set(table["n"]) == {1, 2, 3}
    assert set(table["concept"]) <= labels and catalog.intervention_strip("conv1", table["concept"].iloc[0]).shape[2:] == (
        32, 32, 3)
    assert main(["run", str(jobs / "demo_generator.toml")]) == 0
    again = capsys.readouterr().out
    assert "demo generator: cached" in again and "demo segmenter: cached" in again
