"""The dissection stage through the command line on a real local Ray: planted color detectors on a
tiny Broden directory (conftest's dissection_job), IoUs computed by hand from the planted masks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from catalog_schema import Catalog
from conftest import dissection_job, kill_run_when
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")

@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dissection")
    job, world = dissection_job(folder)
    assert main(["run", str(job)]) == 0
    return folder / "catalog", world


def test_planted_detectors_get_their_concepts(dissected):
    catalog, world = dissected
    units = pd.read_parquet(catalog / "units.parquet").set_index("unit")
    # unit 0 fires exactly on red pixels: the object mask `redthing`
    assert units.loc[0, ["label", "category"]].tolist() == ["redthing", "object"]
    assert units.loc[0, "iou"] == pytest.approx(1.0, abs=1e-6) and units.loc[0, "interpretable"]
    # unit 2 fires on the green background of `greenland` images, an image-level scene label:
    # I = green pixels, union = all pixels of greenland images (green appears nowhere else)
    green_images = int((world.scene == 4).sum())
    expected = world.green.sum() / (green_images * world.green[0].size)
    assert units.loc[2, ["label", "category"]].tolist() == ["greenland", "scene"]
    assert units.loc[2, "iou"] == pytest.approx(expected, abs=1e-6)
    # unit 1 fires on a few unlabeled blue pixels: not interpretable
    assert units.loc[1, "iou"] < 0.04 and not units.loc[1, "interpretable"]


def test_iou_of_a_label_on_a_second_plane_by_hand(dissected):
    catalog, world = dissected
    table = pd.read_parquet(catalog / "dissection.parquet")
    red = table[table["unit"] == 0].set_index("concept")
    # `redpart` is the red mask on plane 2 of the part cell of odd images. The part term of the union
    # counts an image's red pixels when one of them lies on a part label: every odd image, and the
    # even ones whose red touches the `wheel` corner (NetDissect-Lite's rule)
    odd = world.red[1::2].sum()
    touching = sum(int(r.sum()) for r in world.red[0::2] if r[:2, :2].any())
    assert red.loc["redpart", "intersection"] == odd
    assert red.loc["redpart", "union"] == odd + touching
    assert red.loc["redpart", "iou"] == pytest.approx(odd / (odd + touching), abs=1e-6)
    assert red.loc["redpart", "category"] == "part" and red.loc["redpart", "rank"] == 0
    assert red.loc["wheel", "rank"] == 1
    assert set(table["category"]) == {"object", "part", "scene"}
    assert (table["threshold"] == 0).all()  # half of all activations are 0: the top half starts at 0
    assert len(table) == 3 * (1 + 2 + 2)  # every label of every category, at most 5 per category


def test_describe_and_query_show_concepts(dissected, capsys):
    catalog, _ = dissected
    assert main(["describe", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert "interpretable units (unique concepts)" in out and "object" in out and "scene" in out
    assert main(["query", str(catalog), "--label", "redthing", "--min-iou", "0.5", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("relu,0,")
    manifest = json.loads((catalog / "manifest.json").read_text())
    assert manifest["concepts"]["images"] == 12 and manifest["concepts"]["skipped"] == []
    assert manifest["layers"][0]["interpretable_units"] == 2 and manifest["settings"]["dissection"]["quantile"] == 0.5
    assert Catalog.open(catalog).dissection().shape[0] == 15


def test_query_finds_units_by_synonym_and_category(dissected, capsys):
    """mini_broden's label.csv gives redthing the synonyms "scarlet blob;crimson thing", greenland "meadow"
    (units 1 and 2 are labelled greenland; unit 1 is not interpretable)."""
    catalog, _ = dissected
    concepts = Catalog.open(catalog).concepts().set_index("concept")
    assert concepts.loc["redthing", "synonyms"] == "scarlet blob;crimson thing"
    assert concepts.loc["wheel", ["concept_number", "category"]].tolist() == [2, "part"]
    for argv, units in ((["--label", "CRIMSON"], [0]), (["--label", "meadow"], [1, 2]), (["--label", "land"], [1, 2]),
                        (["--category", "scene"], [1, 2]), (["--category", "object"], [0]),
                        (["--label", "meadow", "--min-iou", "0.04"], [2]),
                        (["--label", "scarlet", "--category", "scene"], [])):
        assert main(["query", str(catalog), *argv, "--format", "json"]) == 0
        assert [r["unit"] for r in json.loads(capsys.readouterr().out)] == units, argv
    assert main(["query", str(catalog), "--category", "colour"]) == 2
    err = capsys.readouterr().err
    assert "--category 'colour'" in err and "object, part, scene" in err


def test_same_dissection_whatever_the_shards_and_workers(tmp_path, dissected):
    catalog, _ = dissected
    job, _ = dissection_job(tmp_path, shard=2, workers=2)  # 6 shards of one batch each
    assert main(["run", str(job)]) == 0
    for table in ("dissection", "units"):
        pd.testing.assert_frame_equal(pd.read_parquet(catalog / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "catalog" / f"{table}.parquet"))


def _broken(tmp_path: Path, edit) -> Path:
    job, _ = dissection_job(tmp_path)
    edit(tmp_path / "broden")
    return job


def _replace_in(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("edit, expected", [
    (lambda b: _replace_in(b / "index.csv", "image,split,ih,iw,sh,sw", "image,split,ih,iw,sh,sx"),
     "index.csv: missing column(s) sw"),
    (lambda b: _replace_in(b / "index.csv", "_part_1.png,4", "_part_1.png,9"), "image-level label 9 is not in label.csv"),
    (lambda b: _replace_in(b / "label.csv", "redthing,object(12)", "redthing,object"), "label.csv: row 1"),
    (lambda b: (b / "index.csv").unlink(), "is not a Broden directory: index.csv missing"),
])
def test_malformed_broden_exits_2_naming_the_file(tmp_path, capsys, edit, expected):
    job = _broken(tmp_path, edit)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "catalog" / "units.parquet").exists()


def test_unknown_category_exits_2(tmp_path, capsys):
    job, _ = dissection_job(tmp_path)
    job.write_text(job.read_text().replace('broden = "broden"', 'broden = "broden"\ncategories = ["object", "colour"]'))
    assert main(["run", str(job)]) == 2
    assert "unknown category 'colour'" in capsys.readouterr().err


def test_a_bad_mask_skips_its_image_and_is_recorded(tmp_path):
    def edit(b: Path) -> None:
        Image.new("RGB", (5, 5)).save(b / "images" / "003_object.png")  # wrong size
        (b / "images" / "006_object.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable

    job = _broken(tmp_path, edit)
    assert main(["run", str(job)]) == 0
    concepts = json.loads((tmp_path / "catalog" / "manifest.json").read_text())["concepts"]
    assert concepts["used"] == 10 and [s["image"] for s in concepts["skipped"]] == ["003.png", "006.png"]
    reasons = [s["reason"] for s in concepts["skipped"]]
    assert "003_object.png" in reasons[0] and "row 4" in reasons[0] and "5x5" in reasons[0]
    assert "006_object.png" in reasons[1] and "unreadable" in reasons[1]
    units = pd.read_parquet(tmp_path / "catalog" / "units.parquet").set_index("unit")
    assert units.loc[0, "label"] == "redthing" and units.loc[0, "iou"] == pytest.approx(1.0)


@pytest.mark.slow  # a run in a subprocess, killed
def test_killed_dissection_resumes_from_finished_shards(tmp_path, capsys):
    # 100 shards per pass: a tally shard of 2 images takes a few ms, and the kill must land before the last
    job, _ = dissection_job(tmp_path, batch=2, shard=2, images=200)
    kill_run_when(job, "dissection-tally-*/shard-*.pkl", 2)
    work = tmp_path / "catalog" / ".work"
    tally = len(list(work.glob("dissection-tally-*/shard-*.pkl")))
    crops = len(list(work.glob("crops-*/shard-*.pkl")))  # the example crops' chunks, made before the dissection
    assert 2 <= tally < 100 and len(list(work.glob("dissection-thresholds-*/shard-*.pkl"))) == 100
    assert not (tmp_path / "catalog" / "manifest.json").exists()

    assert main(["run", str(job)]) == 0
    reused = 100 + 100 + tally  # activations, thresholds, the finished part of the tally
    assert crops > 0
    assert f"resumed: {reused + crops} shard(s) reused from the interrupted run, {100 - tally} computed" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert main(["run", str(job), "--out", str(fresh)]) == 0
    for name in ("dissection", "units"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "catalog" / f"{name}.parquet"),
                                      pd.read_parquet(fresh / f"{name}.parquet"), check_exact=True)


def test_bounded_memory_thresholds_give_the_same_catalog(tmp_path, dissected):
    """threshold_memory_mb = 0 forces the three counting passes: the dissection is the same."""
    job, _ = dissection_job(tmp_path)
    job.write_text(job.read_text().replace("quantile = 0.5", "quantile = 0.5\nthreshold_memory_mb = 0"))
    assert main(["run", str(job)]) == 0
    catalog, _ = dissected
    pd.testing.assert_frame_equal(Catalog.open(tmp_path / "catalog").dissection(), Catalog.open(catalog).dissection())
    pd.testing.assert_frame_equal(Catalog.open(tmp_path / "catalog").units(), Catalog.open(catalog).units())
