"""Atomic writes of catalog parts: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from catalog_schema.arrays import STORE, ArrayKind
from catalog_schema.manifest import MANIFEST
from catalog_schema.tables import TABLES, table_file


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_table(catalog: Path, name: str, table: pa.Table) -> None:
    """Write `name`.parquet (must match its schema) through a temporary file and a rename."""
    write_table_file(Path(catalog) / table_file(name), name, table)


def write_table_file(path: Path, name: str, table: pa.Table) -> None:
    """Write a table of schema `name` at any path, atomically (e.g. a diff's --out file)."""
    if not table.schema.equals(TABLES[name]):
        raise ValueError(f"table {name} does not match its schema:\n{table.schema}\nexpected:\n{TABLES[name]}")
    path = Path(path)
    tmp = _tmp(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(catalog: Path, manifest: dict[str, Any]) -> None:
    write_json(Path(catalog) / MANIFEST, manifest)


def write_array(catalog: Path, kind: ArrayKind, layer: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
    """Write one array of the Zarr store complete in a side directory, then swap it into place."""
    root = Path(catalog) / STORE
    group = zarr.open_group(root, mode="a", zarr_format=3)
    group.require_group(kind.group)
    final = root / kind.group / layer
    tmp = _tmp(final)
    arr = zarr.create_array(store=str(tmp), shape=data.shape, chunks=kind.chunks(data.shape),
                            dtype=kind.dtype, fill_value=0, zarr_format=3)
    arr[...] = data.astype(kind.dtype, copy=False)
    arr.attrs.update({"layer": layer, "doc": kind.doc, **(attrs or {})})
    replace_dir(tmp, final)


def replace_dir(new: Path, final: Path) -> None:
    """Move the directory `new` to `final`, replacing what is there with two renames."""
    if final.exists():
        old = _tmp(final)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)


def copy_array(source: Path, catalog: Path, kind: ArrayKind, layer: str) -> None:
    """Copy one array from another catalog as it is (a result reused by re-analysis); atomic like write_array."""
    src = Path(source) / STORE / kind.group / layer
    final = Path(catalog) / STORE / kind.group / layer
    if src.resolve() == final.resolve():
        return
    zarr.open_group(Path(catalog) / STORE, mode="a", zarr_format=3).require_group(kind.group)
    tmp = _tmp(final)
    shutil.copytree(src, tmp)
    replace_dir(tmp, final)


def remove_array(catalog: Path, kind: ArrayKind, layer: str) -> None:
    """Drop a stale array (a stage that did not run this time); nothing when there is none."""
    shutil.rmtree(Path(catalog) / STORE / kind.group / layer, ignore_errors=True)
