"""Check that two catalogs hold the same tables, arrays and manifest, e.g. before and after a refactor.

    python scripts/same_catalog.py REFERENCE_CATALOG NEW_CATALOG
    python scripts/same_catalog.py --run JOB.toml --reference REFERENCE_CATALOG --out NEW_CATALOG

Tables (*.parquet): schema (field order, types, nullability, metadata), row order and every cell
(nulls where nulls are, NaN equal to NaN), and the file bytes. Arrays (every array of arrays.zarr):
zarr.json (shape, dtype, chunks, codecs, fill value, attributes) and the bytes of the data. The
manifest: every key but those two runs of the same code differ in (IGNORED), with each absolute path of
the job written as its key, so that checkouts in other folders compare. Reads the files with pyarrow
and zarr only, never this checkout's code, so a refactor cannot change the checker.
Exit status 0 iff everything is the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

REPO = Path(__file__).resolve().parents[1]
# Manifest keys (dotted) that differ between two runs of the same code on the same inputs.
IGNORED = {
    "run_id": "a fresh uuid per run",
    "started": "clock time", "finished": "clock time",
    "wall_seconds": "measured step times",
    "host": "the machine's name",
    "prepared.demo_model.seconds": "how long training the demo model took (when it was trained, or as recorded)",
    "prepared.demo_model.cached": "whether this run trained the demo model or found it trained",
}
# A hash of the job config with its absolute paths: compared only when the job's paths are the same.
CONFIG_HASH = "fingerprints.config"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, nargs="?", metavar="REFERENCE_CATALOG", help="the reference catalog")
    parser.add_argument("new", type=Path, nargs="?", metavar="NEW_CATALOG", help="the catalog to check against it")
    parser.add_argument("--run", type=Path, metavar="JOB", help="first run JOB with this checkout's code into --out")
    parser.add_argument("--reference", dest="ref", type=Path, metavar="REFERENCE_CATALOG", help="with --run: the reference catalog")
    parser.add_argument("--out", type=Path, metavar="NEW_CATALOG", help="with --run: the catalog to write (a new folder) and check")
    return parser


def compare_tables(ref: Path, new: Path) -> list[tuple[str, str]]:
    """(name, verdict) for every *.parquet of either catalog; verdict 'same' or what differs."""
    out = []
    for name in sorted({p.name for p in ref.glob("*.parquet")} | {p.name for p in new.glob("*.parquet")}):
        a, b = ref / name, new / name
        if not (a.exists() and b.exists()):
            out.append((name, f"only in {'reference' if a.exists() else 'new'}"))
            continue
        ta, tb = pq.read_table(a), pq.read_table(b)
        if not ta.schema.equals(tb.schema, check_metadata=True):
            fields = [f"{i}: {x} vs {y}" for i, (x, y) in enumerate(zip(ta.schema, tb.schema)) if not x.equals(y, True)]
            out.append((name, f"schema differs: {len(ta.schema)} vs {len(tb.schema)} fields; "
                              + ("; ".join(fields[:3]) or f"metadata {ta.schema.metadata} vs {tb.schema.metadata}")))
        elif ta.num_rows != tb.num_rows:
            out.append((name, f"rows differ: {ta.num_rows} vs {tb.num_rows}"))
        elif not ta.equals(tb) and (cell := first_cell_difference(ta, tb)):
            out.append((name, cell))
        elif a.read_bytes() != b.read_bytes():
            out.append((name, "cells equal, but the file bytes differ (writer options, row groups or metadata)"))
        else:
            out.append((name, f"same ({ta.num_rows} rows, {ta.num_columns} columns)"))
    return out


def first_cell_difference(ta: pa.Table, tb: pa.Table) -> str:
    """The first differing cell (column order, then row), NaN equal to NaN; '' when only NaNs made equals() fail."""
    for col in ta.column_names:
        a, b = ta.column(col).combine_chunks(), tb.column(col).combine_chunks()
        if a.equals(b):
            continue
        na, nb = a.is_null().to_numpy(zero_copy_only=False), b.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(a.type):
            va, vb = a.fill_null(0).to_numpy(), b.fill_null(0).to_numpy()
            bad = (na != nb) | (~na & ~(np.isnan(va) & np.isnan(vb)) & (va != vb))
        else:
            la, lb = a.to_pylist(), b.to_pylist()
            bad = np.array([x != y for x, y in zip(la, lb)]) | (na != nb)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            return (f"cell differs: column {col!r} row {row}: {a[row].as_py()!r} vs {b[row].as_py()!r} "
                    f"({int(bad.sum())} cells of the column differ)")
    return ""


def arrays_in(store: Path) -> dict[str, Any]:
    """Every array of a Zarr store by path ('examples/conv1'); groups are named by their path with a '/'."""
    if not store.exists():
        return {}
    root = zarr.open_group(store.resolve(), mode="r")
    nodes: dict[str, Any] = {"/": root}
    for path, node in root.members(max_depth=None):
        nodes[path if isinstance(node, zarr.Array) else path + "/"] = node
    return nodes


def compare_arrays(ref: Path, new: Path) -> list[tuple[str, str]]:
    """(path, verdict) for every array and group of arrays.zarr (the link resolved) in either catalog."""
    na, nb = arrays_in(ref / "arrays.zarr"), arrays_in(new / "arrays.zarr")
    out = []
    for path in sorted(set(na) | set(nb)):
        if path not in na or path not in nb:
            out.append((path, f"only in {'reference' if path in na else 'new'}"))
            continue
        a, b = na[path], nb[path]
        meta_a, meta_b = a.metadata.to_dict(), b.metadata.to_dict()
        if meta_a != meta_b:
            diffs = differences(json.loads(json.dumps(meta_a, default=str)), json.loads(json.dumps(meta_b, default=str)))
            out.append((path, f"zarr.json differs: {'; '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''}"))
        elif isinstance(a, zarr.Group):
            continue  # a group has no data: only its listing (above) and attributes matter
        elif (da := a[...]).tobytes() != (db := b[...]).tobytes():
            view = np.dtype(f"u{da.dtype.itemsize}")  # bit patterns: NaN == NaN, -0.0 != 0.0
            bad = da.view(view) != db.view(view)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            out.append((path, f"data differs at {first}: {da[first].item()!r} vs {db[first].item()!r} ({int(bad.sum())} of {bad.size} elements)"))
        else:
            out.append((path, f"same ({list(a.shape)} {a.dtype}, chunks {list(a.chunks)})"))
    return out


def normalized_manifest(catalog: Path) -> tuple[dict, dict]:
    """(the manifest with each absolute path of its job, wherever it appears, written as <job.KEY>, the raw job)."""
    text = (catalog / "manifest.json").read_text(encoding="utf-8")
    job = json.loads(text).get("job", {})
    for path, key in sorted(((p, k) for k, p in _paths(job, "").items()), key=lambda item: -len(item[0])):
        text = text.replace(json.dumps(path)[1:-1], f"<job.{key}>")
    return json.loads(text), job


def _paths(obj: Any, where: str) -> dict[str, str]:
    """Dotted key -> value of every absolute path string in a JSON object (not inside lists)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _paths(value, f"{where}.{key}" if where else key).items()}
    return {where: obj} if isinstance(obj, str) and obj.startswith("/") else {}


def differences(a: Any, b: Any, where: str = "", ignored: Any = ()) -> list[str]:
    """'key.path[i]: a vs b' wherever two JSON values differ, keys in `ignored` skipped."""
    if where in ignored:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}" if where else str(k), ignored)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", ignored)]
    return [] if a == b else [f"{where}: {json.dumps(a)[:200]} vs {json.dumps(b)[:200]}"]


def compare_manifests(ref: Path, new: Path) -> str:
    """'same' or the differing manifest keys."""
    (ma, job_a), (mb, job_b) = normalized_manifest(ref), normalized_manifest(new)
    diffs = differences(ma, mb, ignored=IGNORED)
    if job_a != job_b:  # other absolute paths: the config hash must differ, and only its normalized form matters
        diffs = [d for d in diffs if not d.startswith(CONFIG_HASH + ":")]
    if diffs:
        return f"{len(diffs)} key(s) differ:\n    " + "\n    ".join(diffs[:20])
    return "same (ignored: " + ", ".join(IGNORED) + (f", {CONFIG_HASH} (job paths differ)" if job_a != job_b else "") + ")"


def compare(ref: Path, new: Path) -> bool:
    """Print one line per table, array and the manifest, then a summary; True iff all are the same."""
    for catalog in (ref, new):
        if not (catalog / "manifest.json").is_file():
            print(f"{catalog}: not a finished catalog (no manifest.json)")
            return False
    results = [("table " + n, v) for n, v in compare_tables(ref, new)]
    results += [("array " + n, v) for n, v in compare_arrays(ref, new)]
    results.append(("manifest.json", compare_manifests(ref, new)))
    for name, verdict in results:
        print(f"{name}: {verdict}")
    bad = [name for name, verdict in results if not verdict.startswith("same")]
    tables = sum(n.startswith("table ") for n, _ in results)
    arrays = sum(n.startswith("array ") and not n.endswith("/") for n, _ in results)
    print(f"summary: {tables} tables, {arrays} arrays, manifest: "
          + ("all the same" if not bad else f"{len(bad)} differ ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})"))
    return not bad


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.run:
        if args.ref is None or args.out is None or args.reference or args.new:
            parser.error("--run JOB needs --reference REFERENCE_CATALOG and --out NEW_CATALOG, and no positional catalogs")
        if args.out.exists() and any(args.out.iterdir()):  # its .work checkpoints would be resumed, whatever code made them
            parser.error(f"--out {args.out} exists and is not empty: remove it, or choose a new folder")
        command = [sys.executable, "-m", "pipeline.cli", "run", str(args.run.resolve()), "--out", str(args.out.resolve())]
        print("running:", " ".join(command), flush=True)
        start = time.perf_counter()
        rc = subprocess.run(command, cwd=REPO).returncode
        print(f"run finished in {time.perf_counter() - start:.0f} s with exit status {rc}", flush=True)
        if rc != 0:
            return rc
        ref, new = args.ref, args.out
    elif args.reference is None or args.new is None or args.ref or args.out:
        parser.error("give REFERENCE_CATALOG NEW_CATALOG, or --run JOB --reference REFERENCE_CATALOG --out NEW_CATALOG")
    else:
        ref, new = args.reference, args.new
    return 0 if compare(ref, new) else 1


if __name__ == "__main__":
    sys.exit(main())
