"""Atomic writes of catalog parts: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from catalog_schema.arrays import STORE, ArrayKind
from catalog_schema.layout import STORE_VERSION_PREFIX, STORE_VERSION_SUFFIX
from catalog_schema.manifest import MANIFEST
from catalog_schema.tables import TABLES, table_file


try:
    _renameat2 = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # not Linux, or a C library without it
    _renameat2 = None


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """write(a temporary file beside `path`), then a rename onto `path`; a failed write leaves `path` as it was."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    """Move the directory `new` to `final`, replacing what is there: one atomic exchange where the
    kernel offers it (Linux renameat2), else two renames."""
    if final.exists():
        if _exchange(new, final):
            shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old directory
            return
        old = _tmp(final)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(staging: Path, catalog: Path) -> None:
    """Move a catalog written completely under `staging` into `catalog`: each table with one rename,
    the array store by pointing the `arrays.zarr` link at it, tables this run did not write removed,
    the manifest last."""
    written = {p.name for p in staging.glob("*.parquet")}
    for name in sorted(written):
        os.replace(staging / name, catalog / name)
    if (staging / STORE).exists():
        _publish_store(staging / STORE, catalog)
    for name in TABLES:
        if table_file(name) not in written:
            (catalog / table_file(name)).unlink(missing_ok=True)
    os.replace(staging / MANIFEST, catalog / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)


def _publish_store(store: Path, catalog: Path) -> None:
    """`arrays.zarr` is a link to a versioned store (.arrays-<id>.zarr), switched with one rename. A reader that
    resolved the link (Catalog.open does) keeps reading whole arrays of its version: the version before
    is kept until the next run, older ones removed."""
    version = catalog / f"{STORE_VERSION_PREFIX}{uuid.uuid4().hex[:12]}{STORE_VERSION_SUFFIX}"
    os.replace(store, version)
    link = catalog / STORE
    kept = {version.name, link.resolve().name if link.is_symlink() else None}
    tmp = _tmp(link)
    os.symlink(version.name, tmp, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():  # a catalog written before versioned stores
        replace_dir(tmp, link)
    else:
        os.replace(tmp, link)
    for old in catalog.glob(f"{STORE_VERSION_PREFIX}*{STORE_VERSION_SUFFIX}"):
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


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

