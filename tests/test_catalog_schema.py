"""The on-disk contract: schemas, atomic replacement, the reader's errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import catalog_schema as cs
from catalog_schema.storage import write_array, write_manifest, write_table
from catalog_schema.tables import from_table as column


def _manifest(**extra):
    base = {"schema_version": cs.SCHEMA_VERSION, "run_id": "r", "started": "s", "finished": "f", "job": {},
            "fingerprints": {"model": "m"}, "stages_done": ["activations"], "data": {}, "layers": [{"name": "conv1"}]}
    return {**base, **extra}


def test_tables_take_missing_columns_as_nulls_and_refuse_unknown_ones(tmp_path):
    table = cs.to_table("units", {"layer": ["conv1"], "unit": [0], "act_max": [1.5]})
    assert table.column("label").null_count == 1 and table.schema == cs.TABLES["units"]
    with pytest.raises(KeyError, match="not in the units schema"):
        cs.to_table("units", {"layer": ["x"], "unit": [0], "color": ["red"]})
    write_table(tmp_path, "units", table)
    assert pd.read_parquet(tmp_path / "units.parquet")["act_max"].tolist() == [1.5]


def test_array_replacement_leaves_no_temporary_and_reads_back(tmp_path):
    first = np.ones((3, 2, 4, 4, 3), np.uint8)
    write_array(tmp_path, cs.EXAMPLES, "conv1", first)
    write_array(tmp_path, cs.EXAMPLES, "conv1", first * 7)
    write_table(tmp_path, "units", cs.to_table("units", {"layer": ["conv1"] * 3, "unit": [0, 1, 2]}))
    write_array(tmp_path, cs.HEATMAPS, "conv1", np.zeros((3, 2, 4, 4), np.uint8))
    write_manifest(tmp_path, _manifest())
    cat = cs.Catalog.open(tmp_path)
    crops, heat = cat.example_images("conv1", 2)
    assert crops.shape == (2, 4, 4, 3) and (crops == 7).all() and heat.shape == (2, 4, 4)
    leftovers = [name for _, dirs, files in os.walk(tmp_path) for name in dirs + files if ".tmp-" in name]
    assert leftovers == []


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(cs.CatalogError, match="does not exist"):
        cs.Catalog.open(tmp_path / "nowhere")
    with pytest.raises(cs.CatalogError, match="manifest.json is missing"):
        cs.Catalog.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(cs.CatalogError, match="not valid JSON"):
        cs.Catalog.open(tmp_path)
    write_manifest(tmp_path, _manifest())
    cat = cs.Catalog.open(tmp_path)
    with pytest.raises(cs.CatalogError, match="no layer 'conv9'; its layers: conv1"):
        cat.featvis("conv9", 0)
    with pytest.raises(cs.CatalogError, match="no featvis array for layer 'conv1'"):
        cat.featvis("conv1", 0)
    assert list(cat.dissection().columns) == cs.TABLES["dissection"].names  # a stage not run: an empty table
    (tmp_path / "manifest.json").write_text(json.dumps({**_manifest(), "schema_version": cs.SCHEMA_VERSION + 1}))
    with pytest.raises(cs.CatalogError, match="upgrade neuron-catalog"):
        cs.Catalog.open(tmp_path)


def _value(field, i: int):
    """A value of the field's type (float columns get a NaN in row 2: a NaN is not a null)."""
    if pa.types.is_string(field.type):
        return f"{field.name}-{i}"
    if pa.types.is_boolean(field.type):
        return i % 2 == 0
    if pa.types.is_floating(field.type):
        return float("nan") if i == 2 else i + 0.25
    if pa.types.is_list(field.type):
        return list(range(i))
    return i


@pytest.mark.parametrize("name", sorted(cs.TABLES))
def test_every_nullable_column_comes_back_from_a_catalog_as_written(tmp_path, name):
    """Reuse reads a previous catalog's tables back and writes them again: every null stays a null (row 1 of
    each nullable column), every NaN a NaN, every type its schema's."""
    schema, rows = cs.TABLES[name], 4
    columns = {f.name: [None if i == 1 and f.nullable else _value(f, i) for i in range(rows)] for f in schema}
    written = cs.to_table(name, columns)
    write_table(tmp_path, name, written)
    read = cs.Catalog(tmp_path, _manifest()).arrow(name)
    again = cs.to_table(name, {c: column(read, c) for c in read.column_names})
    assert again.schema == schema
    for f in schema:
        assert again.column(f.name).is_null().to_pylist() == [i == 1 and f.nullable for i in range(rows)], f.name
    pd.testing.assert_frame_equal(again.to_pandas(), written.to_pandas())


def test_an_older_catalog_missing_a_column_reads_it_as_nulls(tmp_path):
    old = cs.to_table("units", {"layer": ["conv1"], "unit": [0]}).drop_columns(["nonfinite"])
    pq.write_table(old, tmp_path / "units.parquet")
    read = cs.Catalog(tmp_path, _manifest()).arrow("units")
    assert read.schema == cs.TABLES["units"] and read.column("nonfinite").null_count == 1
