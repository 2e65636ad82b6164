"""Broden directories NetDissect-Lite's SegmentationData reads are read here too: broden1_224's twelve
index.csv columns with a category.csv listing only some of them, categories with no labels, a label.csv
row for 0. Index columns that are not categories are ignored and recorded; only what NetDissect-Lite
cannot use either is refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from catalog_schema import Catalog
from conftest import dissection_toml, write_job
from mini_broden import write_mini_broden
from pipeline.inputs.broden import load_masks, open_broden
from pipeline.cli import main
from pipeline.errors import UserError

BRODEN1 = ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene", "texture"]


def broden1_layout(root: Path, listed: list[str]) -> None:
    """Rewrite a mini Broden's index.csv with broden1_224's twelve columns (color, material, texture empty)
    and a category.csv listing only `listed`; texture, when listed, gets a c_texture.csv with no label."""
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, BRODEN1)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in BRODEN1} for row in rows)
    with open(root / "category.csv", "w", newline="") as f:
        f.write("name,first,last,count,frequency\n" + "".join(f"{c},0,0,0,0\n" for c in listed))
    if "texture" in listed:
        (root / "c_texture.csv").write_text("code,number,name,frequency,coverage\n")


def test_a_subset_of_broden1_columns_reads_as_netdissect_lite_reads_it(tmp_path):
    write_mini_broden(tmp_path, images=4)
    broden1_layout(tmp_path, ["object", "scene", "texture"])
    broden = open_broden(tmp_path)
    assert broden.categories == ("object", "scene", "texture")  # category.csv's, in its order
    assert broden.ignored_columns == {c: "not listed in category.csv" for c in ("color", "part", "material")}
    assert sorted(broden.labels) == [1, 4, 5]  # part's labels went with its column; texture has none
    masks = load_masks(broden, broden.images[1])
    assert set(masks) == {"object", "scene", "texture"} and masks["texture"].shape == (0, 16, 16)
    asked = open_broden(tmp_path, ["scene"])
    assert asked.categories == ("scene",) and asked.ignored_columns["object"] == "not in [concepts] categories"


def test_asking_for_an_ignored_column_says_why(tmp_path):
    write_mini_broden(tmp_path, images=2)
    broden1_layout(tmp_path, ["object", "scene"])
    with pytest.raises(UserError, match="'part' is a column of index.csv but is ignored \\(not listed in category.csv\\)"):
        open_broden(tmp_path, ["object", "part"])


def test_without_category_csv_columns_lacking_a_code_table_are_ignored(tmp_path):
    write_mini_broden(tmp_path, images=2)
    (tmp_path / "category.csv").unlink()
    (tmp_path / "c_part.csv").unlink()
    broden = open_broden(tmp_path)
    assert broden.categories == ("object", "scene")
    assert broden.ignored_columns == {"part": "no category.csv and no c_part.csv"}


def test_rows_netdissect_lite_skips_are_skipped(tmp_path):
    write_mini_broden(tmp_path, images=2)
    with open(tmp_path / "label.csv") as f:
        header, *rest = f.read().splitlines()
    (tmp_path / "label.csv").write_text("\n".join([header, "0,-,object(0),0,0,", *rest]) + "\n")  # 0: unlabeled
    with open(tmp_path / "c_part.csv", "a") as f:
        f.write("3,77,ghost,1,0.1\n")  # a code of a label number label.csv lacks
    broden = open_broden(tmp_path)
    assert sorted(broden.labels) == [1, 2, 3, 4, 5]
    assert len(broden.ignored_rows) == 1
    assert broden.ignored_rows[0].endswith("c_part.csv: row 3 (line 4), column 'number': label 77 is not in label.csv; row skipped")


@pytest.mark.usefixtures("ray_local")
def test_dissection_on_a_broden1_subset_runs_and_records_what_it_ignored(tmp_path, capsys):
    """The run on the twelve-column subset equals the run on the plain directory restricted to its categories."""
    write_mini_broden(tmp_path / "plain", images=8)
    shutil.copytree(tmp_path / "plain", tmp_path / "subset")
    broden1_layout(tmp_path / "subset", ["object", "scene", "texture"])
    (tmp_path / "images").mkdir()
    for i in range(8):
        shutil.copy(tmp_path / "plain" / "images" / f"{i:03d}.png", tmp_path / "images")
    runs = {"subset": ("subset", None), "asked": ("subset", ["object", "scene"]), "plain": ("plain", ["object", "scene"])}
    for catalog, (broden, categories) in runs.items():
        job = write_job(tmp_path, dissection_toml(batch=4, broden=broden, categories=categories, catalog=f"catalogs/{catalog}"))
        assert main(["run", str(job), "--stages", "activations,dissection"]) == 0, capsys.readouterr().err
    subset = Catalog.open(tmp_path / "catalogs" / "subset")
    ignored = subset.manifest["concepts"]["ignored_columns"]
    assert ignored == {c: "not listed in category.csv" for c in ("color", "part", "material")}
    units = subset.units().set_index("unit")
    assert units.loc[0, ["label", "iou"]].tolist() == ["redthing", 1.0]  # the planted red detector, by hand
    assert units.loc[2, "label"] == "greenland"
    for name in ("asked", "plain"):
        other = Catalog.open(tmp_path / "catalogs" / name)
        keep = ["unit", "label", "category", "iou", "interpretable"]
        pd.testing.assert_frame_equal(subset.units()[keep], other.units()[keep])
        pd.testing.assert_frame_equal(subset.dissection().query("category != 'texture'").reset_index(drop=True),
                                      other.dissection())
    assert main(["describe", str(tmp_path / "catalogs" / "subset")]) == 0
    out = capsys.readouterr().out
    assert "ignored      index.csv column 'part': not listed in category.csv" in out
    manifest = json.loads((tmp_path / "catalogs" / "asked" / "manifest.json").read_text())
    assert manifest["concepts"]["categories"] == ["object", "scene"]
    assert manifest["concepts"]["ignored_columns"]["texture"] == "not in [concepts] categories"
