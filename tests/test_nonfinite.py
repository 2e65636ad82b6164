"""NaN and infinite activations: counted per unit, read as 0 in the statistics, and the run goes on
through every stage."""

from __future__ import annotations

import numpy as np
import pytest

from catalog_schema import Catalog
from conftest import RED_IMAGE, job_toml, make_images, write_job
from mini_broden import write_mini_broden
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")

def _job(folder):
    """tests/assets/tiny_models.py:non_finite: `poison` units 1 and 2 are NaN and +inf at the red pixel, every stage."""
    return write_job(folder, job_toml("non_finite", ["poison"], broden="broden", k=3, patch=8,
                                      featvis={"steps": 8, "size": 16}, dissection={"quantile": 0.2},
                                      shapley={"eval_images": 12, "rounds": 2, "permutations_per_round": 2}))


def test_nonfinite_units_are_flagged_and_the_run_goes_on(tmp_path, capsys):
    make_images(tmp_path / "images", count=16)
    write_mini_broden(tmp_path / "broden", images=6)
    assert main(["run", str(_job(tmp_path))]) == 0
    cat = Catalog.open(tmp_path / "catalog")
    units = cat.units().set_index("unit")
    assert units["nonfinite"].tolist() == [0, 1, 1]  # one red pixel, one bad value each
    assert cat.manifest["summary"]["nonfinite_units"] == 2
    for column in ("act_mean", "act_std", "act_max", "act_min", "frac_active"):
        assert np.isfinite(units[column]).all(), column
    examples = cat.examples("poison", 1)
    assert np.isfinite(examples["activation"]).all()
    crops, heat = cat.example_images("poison", 1)
    assert crops.dtype == np.uint8 and heat.dtype == np.uint8
    assert set(cat.manifest["stages_done"]) == {"activations", "featvis", "dissection", "shapley"}
    assert cat.dissection()["iou"].notna().all() and cat.shapley()["value"].notna().all()
    assert RED_IMAGE in cat.images()["image_id"].tolist()
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "catalog")]) == 0
    assert "NaN or infinite" in capsys.readouterr().out
