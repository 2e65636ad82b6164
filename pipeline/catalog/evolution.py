"""Feature evolution: every unit followed through a series of catalogs (checkpoints, scheduled re-analyses).

Consecutive catalogs are matched as `diff` matches them (by unit number, or one-to-one by activation
correlation when the units were reshuffled); a unit's `track` is its number in the first catalog of its
chain of matches, so grouping by (layer, track) gives each feature's history, as Zeiler & Fergus show
features over training epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import catalog_schema as cs
from catalog_schema import MANIFEST, Catalog, CatalogError
from catalog_schema.storage import write_table_file
from pipeline.catalog.diff import diff_catalogs
from pipeline.catalog.history import finished_runs
from pipeline.errors import UserError


def history_catalogs(paths: list[Path]) -> list[Catalog]:
    """The catalogs in order: one history folder (its finished runs, oldest first) or a list of catalogs."""
    if len(paths) == 1 and not (paths[0] / MANIFEST).exists():
        runs = finished_runs(paths[0])
        if not runs:
            raise UserError(f"{paths[0]} is neither a catalog nor a catalog history with finished runs "
                            "(a job with [output] history = true writes one); give its folder or catalogs in order.")
        paths = runs
    catalogs = []
    for path in paths:
        if not (Path(path) / MANIFEST).exists():
            raise CatalogError(f"{path} is not a catalog (it has no {MANIFEST}): give catalog folders, oldest first.")
        catalogs.append(Catalog.open(path))
    if len(catalogs) < 2:
        raise UserError("history needs two catalogs or more, oldest first (or a history folder holding them).")
    return catalogs


def evolution(catalogs: list[Catalog], match: str = "auto") -> pd.DataFrame:
    """The EVOLUTION table: one row per unit per catalog, each matched to its counterpart in the catalog before."""
    frames, previous = [], None
    for run, cat in enumerate(catalogs):
        rows = _units_of(cat, run)
        if previous is not None:
            pairs = diff_catalogs(catalogs[run - 1], cat, match).units.dropna(subset=["unit"])
            pairs = pairs.astype({"unit": "int64"})[["layer", "unit", "old_unit", "matched_by", "activation_corr",
                                                      "label_changed", "top_jaccard"]]
            rows = rows.drop(columns=["matched_unit", "matched_by", "activation_corr", "label_changed", "top_jaccard"])
            rows = rows.merge(pairs, how="left", on=["layer", "unit"])
            rows["matched_unit"] = rows.pop("old_unit")
            before = previous.set_index(["layer", "unit"])[["track", "first_run"]]
            keys = pd.MultiIndex.from_arrays([rows["layer"], rows["matched_unit"].fillna(-1).astype(int)])
            known = keys.isin(before.index)
            rows.loc[known, ["track", "first_run"]] = before.reindex(keys[known]).to_numpy()
        frames.append(rows)
        previous = rows
    table = pd.concat(frames, ignore_index=True)
    return cs.to_table("evolution", {f.name: _column(table, f.name) for f in cs.TABLES["evolution"]}).to_pandas()


def _units_of(cat: Catalog, run: int) -> pd.DataFrame:
    """The catalog's units as evolution rows, each the start of its own track until matched."""
    units = cat.units()
    interpretable = units["interpretable"].fillna(False).astype(bool)
    return pd.DataFrame({
        "run": run, "run_name": cat.path.name, "run_id": cat.manifest["run_id"], "layer": units["layer"],
        "unit": units["unit"].astype("int64"), "matched_unit": np.nan, "matched_by": None, "activation_corr": np.nan,
        "track": units["unit"].astype("int64"), "first_run": run,
        "label": units["label"].where(interpretable, None), "category": units["category"].where(interpretable, None),
        "iou": units["iou"], "label_changed": None, "importance": _importance(units), "top_jaccard": np.nan,
    })


def _importance(units: pd.DataFrame) -> pd.Series:
    """The Shapley value where the run estimated it, else the Banzhaf value (a run with Banzhaf only)."""
    if "banzhaf" in units and units["shapley"].isna().all():
        return units["banzhaf"]
    return units["shapley"]


def _column(table: pd.DataFrame, name: str) -> list:
    """A column as to_table takes it: NaN (pandas' missing value) and None become nulls."""
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in table[name].tolist()]


def write_evolution(table: pd.DataFrame, out: Path) -> None:
    """The table as Parquet (schema `evolution` of catalog_schema), written atomically."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'evolution.parquet'}.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path.")
    write_table_file(out, "evolution", pa.Table.from_pandas(table, schema=cs.TABLES["evolution"], preserve_index=False))
