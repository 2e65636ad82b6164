"""The featvis stage through the command line on a real local Ray."""

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

def featvis_job(folder: Path, workers: int = 1, **featvis) -> Path:
    """tests/assets/tiny_models.py:pattern_detectors (relu units: red, blue, vertical and horizontal stripes) on noise."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / "images" / c).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / c / f"{i}.png")
    return write_job(folder, job_toml("pattern_detectors", ["conv", "relu"], norm=(0.5, 0.5), batch=8, k=2, patch=8,
                                      featvis={"steps": 64, "batch_units": 4, **featvis}, workers=workers))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("featvis")
    assert main(["run", str(featvis_job(folder))]) == 0
    return folder / "catalog"


def test_catalog_holds_the_visualizations(rendered):
    cat = Catalog.open(rendered)
    views = cat.featvis("relu", 2)
    assert views.shape == (2, 32, 32, 3) and views.dtype == np.uint8  # positive, negative
    manifest = json.loads((rendered / "manifest.json").read_text())
    assert manifest["featvis"]["views"] == ["positive", "negative"] and manifest["featvis"]["size"] == 32
    units = cat.units().set_index(["layer", "unit"])
    relu = units.loc["relu"]
    # the stripe detectors reach far more on their visualization than on any data set image
    assert (relu.loc[[2, 3], "featvis_ratio"] > 2).all()
    assert (relu["featvis_activation"] > 0).all() and not relu["featvis_flat"].any()
    assert cat.filters("conv").shape == (4, 7, 7, 3) and not cat.has_array("weights", "relu")  # conv reads the input
    assert cat.projections("relu", 2).shape == (2, 2, 8, 8, 3)  # k top examples x (deconvnet, guided)


def test_same_visualizations_whatever_the_workers(tmp_path, rendered):
    assert main(["run", str(featvis_job(tmp_path, workers=2))]) == 0
    other = Catalog.open(tmp_path / "catalog")
    for layer in ("conv", "relu"):
        assert np.array_equal(other.featvis(layer, slice(None)), Catalog.open(rendered).featvis(layer, slice(None)))
    columns = ["featvis_activation", "featvis_ratio", "featvis_flat"]
    pd.testing.assert_frame_equal(other.units()[columns], Catalog.open(rendered).units()[columns])


def test_bad_featvis_settings_exit_2(tmp_path, capsys):
    assert main(["run", str(featvis_job(tmp_path, objective="smile"))]) == 2
    assert "'stages.featvis.objective' must be one of rectified, channel" in capsys.readouterr().err
