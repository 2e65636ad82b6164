"""`neuron-catalog history`: the demo model trained for 2, 6 and 20 epochs, cataloged into one history folder,
followed unit by unit; concept labels appear as training goes on."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog_schema import Catalog
from pipeline.catalog.history import finished_runs
from pipeline.cli import main
from pipeline.concepts import make_concept_world
from pipeline.demo.train import train_demo_model

pytestmark = pytest.mark.usefixtures("ray_local")
EPOCHS = (2, 6, 20)
UNITS = 16 + 32 + 32 + 64 + 6  # conv1..conv4 and fc of the demo model


def _job(folder: Path, epochs: int) -> Path:
    job = folder / f"job{epochs}.toml"
    job.write_text(f"""seed = 0
[model]
factory = "pipeline.demo.model:concept_cnn"
weights = "model{epochs}.pt"
layers = ["conv1", "conv2", "conv3", "conv4", "fc"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[data]
images = "world/scenes"
batch_size = 64
[concepts]
broden = "world"
[stages.activations]
k = 4
patch_size = 16
[stages.dissection]
quantile = 0.05
iou_threshold = 0.2
[output]
catalog = "history"
history = true
""")
    return job


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("history")
    world = make_concept_world(folder / "world", images=300, size=64, seed=0).out
    for epochs in EPOCHS:
        train_demo_model(world, folder / f"model{epochs}.pt", epochs=epochs, seed=0, batch_size=32)
        assert main(["run", str(_job(folder, epochs))]) == 0
    return folder / "history"


@pytest.fixture(scope="module")
def evolved(history) -> tuple[pd.DataFrame, Path]:
    site = history.parent / "site"
    assert main(["history", str(history), "--site", str(site)]) == 0
    return pd.read_parquet(history / "evolution.parquet"), site


def test_every_unit_of_every_run_is_followed(history, evolved):
    table, _ = evolved
    runs = finished_runs(history)
    assert [p.name for p in runs] == sorted(table["run_name"].unique()) and len(runs) == 3
    assert table.groupby("run").size().tolist() == [UNITS] * 3
    for run, path in enumerate(runs):  # labels and IoUs are each catalog's own, the label only when interpretable
        units = Catalog.open(path).units()
        mine = table[table["run"] == run].set_index(["layer", "unit"])
        theirs = units.set_index(["layer", "unit"]).reindex(mine.index)
        want = theirs["label"].where(theirs["interpretable"].astype(bool))
        assert mine["label"].fillna("-").tolist() == want.fillna("-").tolist()
        np.testing.assert_allclose(mine["iou"], theirs["iou"])
    later = table[table["run"] > 0]
    assert later["matched_unit"].notna().all()  # one architecture: every unit has a counterpart
    before = table.set_index(["run", "layer", "unit"])["track"]
    assert (later["track"].to_numpy() == before.loc[list(zip(later["run"] - 1, later["layer"], later["matched_unit"]))]
            .to_numpy()).all()


def test_correlation_with_the_counterpart_is_the_probes_correlation(history, evolved):
    table, _ = evolved
    old, new = (Catalog.open(p) for p in finished_runs(history)[:2])
    row = table[(table["run"] == 1) & (table["layer"] == "conv3")].iloc[5]
    a, ids_a = old.probes("conv3")
    b, ids_b = new.probes("conv3")
    assert (ids_a == ids_b).all()
    want = np.corrcoef(a[int(row["matched_unit"])], b[int(row["unit"])])[0, 1]
    assert row["activation_corr"] == pytest.approx(want, abs=1e-5)


def test_concept_labels_appear_as_training_goes_on(evolved):
    table, _ = evolved
    labelled = table.groupby("run")["label"].apply(lambda s: int(s.notna().sum()))
    concepts = table.groupby("run")["label"].nunique()
    assert labelled[2] > labelled[0] and concepts[2] > concepts[0], (labelled, concepts)
    by_track = table.pivot_table(index=["layer", "track"], columns="run", values="label", aggfunc="first")
    appeared = by_track[by_track[0].isna() & by_track[2].notna()]
    assert len(appeared) >= 10
    changed = table[table["run"] > 0]
    assert changed["label_changed"].fillna(False).astype(bool).sum() > 0


def test_the_evolution_page_links_each_changed_unit_to_its_pages(browser, evolved):
    from conftest import check_page

    table, site = evolved
    page = site / "index.html"
    assert check_page(browser, page.as_uri()) == ([], [])
    html = page.read_text()
    assert "Units per concept, per run" in html and "conv4" in html
    links = re.findall(r'href="(runs/[^"]+/units/[^"]+\.html)"', html)
    assert links and all((site / link).is_file() for link in links)
    assert check_page(browser, (site / links[0]).as_uri()) == ([], [])
    changed_conv4 = table[(table["layer"] == "conv4") & table["label_changed"].fillna(False).astype(bool)]
    assert "conv4</h2>" in html and len(changed_conv4)


def test_history_input_errors(history, tmp_path, capsys):
    runs = [str(p) for p in finished_runs(history)]
    assert main(["history", *runs]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["history", str(tmp_path)]) == 2
    assert "catalog history" in capsys.readouterr().err
    assert main(["history", runs[0], "--out", str(tmp_path / "e.parquet")]) == 2
    assert "two catalogs or more" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    assert main(["history", *runs[:2], "--out", str(tmp_path / "e.parquet"), "--site", str(tmp_path / "notes")]) == 2
    assert "--site" in capsys.readouterr().err and (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    assert main(["history", *runs[:2], "--out", str(tmp_path / "e.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "e.parquet")["run"].max() == 1


def test_runs_of_one_second_keep_their_order(tmp_path):
    names = ["20261202T010000Z-10", "20261202T010000Z", "20261202T010000Z-2", "20261201T230000Z", "20261202T010000Z-1"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "20261202T020000Z").mkdir()  # unfinished: no manifest
    assert [p.name for p in finished_runs(tmp_path)] == [
        "20261201T230000Z", "20261202T010000Z", "20261202T010000Z-1", "20261202T010000Z-2", "20261202T010000Z-10"]
