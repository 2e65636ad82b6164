"""`neuron-catalog export`, and reading the catalog's Parquet from tools outside Python's pandas (DuckDB, Polars),
as the README shows."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest

import catalog_schema as cs
from catalog_schema import Catalog
from pipeline.cli import main


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, ray_local):
    """Every stage of conftest's all_stages_job: units with nulls (no label), NaN-free floats, examples, shapley."""
    from conftest import all_stages_job, run_cli

    return Catalog.open(run_cli(all_stages_job(tmp_path_factory.mktemp("export"))).catalog)


def _tables(catalog: Catalog) -> list[str]:
    return [name for name in cs.TABLES if (catalog.path / cs.tables.table_file(name)).exists()]


def test_csv_export_holds_every_table_as_written(catalog, tmp_path, capsys):
    assert main(["export", str(catalog.path), "--format", "csv", "--out", str(tmp_path / "csv")]) == 0
    names = _tables(catalog)
    assert {"units", "examples", "images", "dissection", "shapley", "concepts"} <= set(names)
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted([f"{n}.csv" for n in names] + ["manifest.json"])
    for name in names:
        read = pacsv.read_csv(tmp_path / "csv" / f"{name}.csv",
                              convert_options=pacsv.ConvertOptions(column_types=cs.TABLES[name], strings_can_be_null=True,
                                                                   quoted_strings_can_be_null=False))
        want = catalog.arrow(name)
        assert read.num_rows == want.num_rows and read.column_names == want.column_names, name
        pd.testing.assert_frame_equal(read.cast(want.schema).to_pandas(), want.to_pandas(), check_exact=True, obj=name)
    manifest = json.loads((tmp_path / "csv" / "manifest.json").read_text())
    assert manifest["run_id"] == catalog.manifest["run_id"]
    assert "exported" in capsys.readouterr().out


def test_jsonl_export_has_one_object_per_row_with_nulls(catalog, tmp_path):
    assert main(["export", str(catalog.path), "--format", "jsonl", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "units.jsonl").read_text().splitlines()
    units = catalog.units()
    assert len(lines) == len(units)
    rows = [json.loads(line) for line in lines]
    assert [(r["layer"], r["unit"]) for r in rows] == list(zip(units["layer"], units["unit"]))
    for r, (_, want) in zip(rows, units.iterrows()):
        for column in ("act_max", "iou", "label", "shapley"):
            value = want[column]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert r[column] is None
            else:
                assert r[column] == pytest.approx(value, rel=1e-7) if isinstance(value, float) else r[column] == value
    # Shapley's players are conv2's units (conftest.ALL_STAGES): the other layers' values are nulls
    assert {r["layer"] for r in rows if r["shapley"] is not None} == {"conv2"}
    assert sum(r["shapley"] is None for r in rows) == int((units["layer"] != "conv2").sum()) > 0


def test_export_errors(catalog, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", str(catalog.path), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_duckdb_reads_the_catalog(catalog):
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is not installed (pip install duckdb)")
    top = duckdb.sql(f"SELECT layer, count(*) AS n, max(act_max) AS m FROM '{catalog.path / 'units.parquet'}' "
                     "GROUP BY layer ORDER BY layer").fetchall()
    units = catalog.units()
    want = units.groupby("layer").agg(n=("unit", "size"), m=("act_max", "max")).sort_index()
    assert [(layer, n) for layer, n, _ in top] == list(zip(want.index, want["n"]))
    np.testing.assert_allclose([m for *_, m in top], want["m"], rtol=1e-6)


def test_polars_reads_the_catalog(catalog):
    pl = pytest.importorskip("polars", reason="Polars is not installed (pip install polars)")
    frame = pl.read_parquet(catalog.path / "examples.parquet").filter(pl.col("sign") == "top")
    want = catalog.examples()
    assert frame.height == int((want["sign"] == "top").sum())
    assert frame.columns == list(want.columns)
