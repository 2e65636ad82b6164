"""`neuron-catalog export`: every table of a catalog as plain CSV or JSON Lines files, for tools outside Python.

Values are written as the Parquet files hold them: a null is an empty unquoted CSV cell or a JSON null,
a NaN is `nan` in CSV and null in JSON (JSON has no NaN nor infinity: those are null too). Each file is
written through a temporary file and a rename. The arrays (pictures, maps) stay in arrays.zarr.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.csv as pacsv

from catalog_schema import MANIFEST, Catalog
from catalog_schema.storage import write_atomically
from catalog_schema.tables import TABLES, table_file
from pipeline.errors import UserError

FORMATS = ("csv", "jsonl")


def export_catalog(catalog: Catalog, fmt: str, out: Path) -> list[Path]:
    """Write OUT/<table>.<fmt> for every table the catalog holds, and OUT/manifest.json; the files written."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the exported tables.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        if (catalog.path / table_file(name)).exists():
            written.append(write_atomically(out / f"{name}.{fmt}", lambda tmp, n=name: _write(catalog, n, fmt, tmp)))
    written.append(write_atomically(out / MANIFEST, lambda tmp: shutil.copyfile(catalog.path / MANIFEST, tmp)))
    return written


def _write(catalog: Catalog, name: str, fmt: str, path: Path) -> None:
    table = catalog.arrow(name)
    if fmt == "csv":
        pacsv.write_csv(table, path)
        return
    with open(path, "w", encoding="utf-8") as f:
        for batch in table.to_batches(max_chunksize=65536):
            for row in batch.to_pylist():
                f.write(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                    for k, v in row.items()}, allow_nan=False) + "\n")
