"""`neuron-catalog describe` on catalogs of the importance stage (TMC, MSR, Banzhaf or TMC and Banzhaf), against
the tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from test_shapley_run import shapley_job

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory) -> dict[str, Path]:
    """test_shapley_run's planted model: relu:1 matters for c_green only, relu:0 and relu:3 for b_warm only,
    relu:2 is dead. 'both': TMC then Banzhaf; 'banzhaf': Banzhaf alone; 'msr': the MSR Shapley estimator alone."""
    out = {}
    for name in ("both", "banzhaf", "msr"):
        folder = tmp_path_factory.mktemp(f"describe-{name}")
        assert main(["run", str(shapley_job(folder, estimator=name, banzhaf_samples=64, msr_samples=512))]) == 0
        out[name] = folder / "catalog"
    return out


def _describe(catalog: Path, capsys) -> list[str]:
    assert main(["describe", str(catalog)]) == 0
    return capsys.readouterr().out.splitlines()


def _expected_class_lines(by_class: pd.DataFrame) -> dict[str, tuple[int, str]]:
    """class name -> (units with ci_low > 0, its top 3 units by value as describe writes them)."""
    out = {}
    for name, rows in by_class.groupby("class_name"):
        top = rows.sort_values(["value", "layer", "unit"], ascending=[False, True, True]).head(3)
        out[name] = (int((rows["ci_low"] > 0).sum()), ", ".join(f"{r.layer}:{r.unit} {r.value:.4g}" for r in top.itertuples()))
    return out


@pytest.mark.parametrize("name, estimator", [("both", "tmc"), ("banzhaf", "banzhaf"), ("msr", "msr")])
def test_describe_names_the_estimators_and_the_units_each_class_rests_on(catalogs, capsys, name, estimator):
    lines = _describe(catalogs[name], capsys)
    by_class = pd.read_parquet(catalogs[name] / "importance_by_class.parquet")
    by_class = by_class[by_class["estimator"] == estimator]  # the run's first estimator
    costs = next(line for line in lines if line.startswith("estimators "))
    assert ("permutations in" in costs) == (name == "both")
    assert ("banzhaf: 64 sampled coalitions" in costs) == (name != "msr")
    assert ("msr (Shapley): 512 sampled coalitions" in costs) == (name == "msr")
    assert any(line.startswith(f"top units by {'Banzhaf' if name == 'banzhaf' else 'Shapley'} value ({estimator};")
               for line in lines)
    assert f"per class ({estimator}; important = interval above 0; top 3 units by value):" in lines
    for class_name, (important, top) in _expected_class_lines(by_class).items():
        line = next(line for line in lines if line.split()[1:2] == [class_name])
        assert line.endswith(f"  {important} important  top {top}"), line
    important = by_class[by_class["ci_low"] > 0]
    per_unit = important.groupby(["layer", "unit"])["class_name"].agg(list)
    one = per_unit[per_unit.map(len) == 1]
    named = ", ".join(f"{layer}:{unit} {names[0]}" for (layer, unit), names in one.items())
    assert f"important for one class only: {len(one)} of 4 units ({named}); for two or more: 0; for none: 1" in lines
    # the planted units: each matters for its one class
    assert named == "relu:0 b_warm, relu:1 c_green, relu:3 b_warm"
    assert any(line.startswith(f"  {'banzhaf' if name == 'banzhaf' else 'shapley'}, N = 2: relu:0;relu:1") for line in lines)


def test_msr_catalog_holds_the_closed_form_shapley_values(catalogs):
    """The planted model's Shapley values (test_shapley_run) by the MSR estimator, in shapley.parquet and units."""
    table = pd.read_parquet(catalogs["msr"] / "shapley.parquet")
    assert table["unit"].tolist() == [0, 1, 2, 3] and (table["samples"] == 512).all()
    assert table["value"].tolist() == pytest.approx([6 / 24, 8 / 24, 0, 2 / 24], abs=0.03)
    assert ((table["ci_low"] <= table["value"]) & (table["value"] <= table["ci_high"])).all()
    units = pd.read_parquet(catalogs["msr"] / "units.parquet")
    assert units.loc[units["layer"] == "relu", "shapley"].tolist() == pytest.approx(table["value"].tolist())
    assert units["banzhaf"].isna().all()
