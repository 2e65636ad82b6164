"""What the importance stage puts in the catalog: shapley.parquet (the Shapley value, by TMC or MSR) and banzhaf.parquet, the per-class
values (importance_by_class.parquet), shapley_ablation.parquet, the value columns of the units table (null
for units that are not players) and the manifest's shapley section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from catalog_schema.layout import BANZHAF_COLUMNS, SHAPLEY_COLUMNS
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.shapley.estimator import Estimate, ShapleyOutput
from pipeline.stages.shapley.settings import ShapleySettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft

TABLES = ("shapley", "banzhaf", "importance_by_class", "shapley_ablation")
UNIT_COLUMNS = {"tmc": SHAPLEY_COLUMNS, "msr": SHAPLEY_COLUMNS, "banzhaf": BANZHAF_COLUMNS}
TABLE_OF = {"tmc": "shapley", "msr": "shapley", "banzhaf": "banzhaf"}


def write_shapley(draft: Draft, players: tuple[tuple[str, int], ...], cfg: ShapleySettings, out: ShapleyOutput,
                  classes: list[str]) -> ManifestPart:
    names = [name for name, n in players for _ in range(n)]
    unit_ids = [u for _, n in players for u in range(n)]
    count = len(names)
    by_class: dict[str, list] = {k: [] for k in ("layer", "unit", "estimator", "metric", "class", "class_name", "value",
                                                  "ci_low", "ci_high", "samples", "sample_std", "sample_range")}
    for e in out.estimates:
        draft.table(TABLE_OF[e.estimator], {
            "layer": names, "unit": unit_ids, "metric": [cfg.metric] * count, "target_class": [cfg.target_class] * count,
            "value": e.value[:, 0], "ci_low": e.ci_low[:, 0], "ci_high": e.ci_high[:, 0], "samples": e.samples,
            **({"sample_std": _nullable(e.std[:, 0]), "sample_range": _nullable(e.spread[:, 0])} if e.std is not None else {})})
        _add_by_class(by_class, e, names, unit_ids, cfg.metric, classes)
        _unit_columns(draft, names, unit_ids, e)
    draft.table("importance_by_class", by_class)
    _ablation_table(draft, out, cfg, names, unit_ids)
    first = out.estimates[0].details
    section = {
        "players": count, "layers": [name for name, _ in players], "eval_images": out.eval_images,
        "classes": list(classes), "v_all": float(out.v_full[0]), "v_none": float(out.v_none[0]),
        "v_all_by_class": _floats(out.v_full[1:]), "v_none_by_class": _floats(out.v_none[1:]),
        "estimators": [e.estimator for e in out.estimates],
        **{key: first[key] for key in ("rounds", "permutations", "evaluations", "unsettled_per_round", "sampled_per_round") if key in first},
        **{e.estimator: e.details for e in out.estimates},
        "warm_start": out.warm_start,
    }
    return ManifestPart({"shapley": section}, asdict(cfg))


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


_nullable = _floats  # a column with null where the value is not finite


def _add_by_class(rows: dict[str, list], e: Estimate, names: list[str], unit_ids: list[int], metric: str,
                  classes: list[str]) -> None:
    for c, class_name in enumerate(classes):
        column = e.value[:, 1 + c]
        rows["layer"] += names
        rows["unit"] += unit_ids
        rows["estimator"] += [e.estimator] * len(names)
        rows["metric"] += [metric] * len(names)
        rows["class"] += [c] * len(names)
        rows["class_name"] += [class_name] * len(names)
        for key, values in (("value", column), ("ci_low", e.ci_low[:, 1 + c]), ("ci_high", e.ci_high[:, 1 + c])):
            rows[key] += _floats(values)  # null: no image of the class
        rows["samples"] += [int(s) for s in e.samples]
        for key, values in (("sample_std", e.std), ("sample_range", e.spread)):
            rows[key] += [None] * len(names) if values is None else _floats(values[:, 1 + c])


def _unit_columns(draft: Draft, names: list[str], unit_ids: list[int], e: Estimate) -> None:
    units = draft.units
    where = {key: i for i, key in enumerate(zip(names, unit_ids))}
    rows = [where.get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for column, values in zip(UNIT_COLUMNS[e.estimator], (e.value[:, 0], e.ci_low[:, 0], e.ci_high[:, 0])):
        units[column] = [float(values[r]) if r is not None else None for r in rows]  # null: not a player


def _ablation_table(draft: Draft, out: ShapleyOutput, cfg: ShapleySettings, names: list[str], unit_ids: list[int]) -> None:
    label = [f"{n}:{u}" for n, u in zip(names, unit_ids)]
    ranked = TABLE_OF[out.estimates[0].estimator]
    rows = out.ablation
    draft.table("shapley_ablation", {
        "metric": [cfg.metric] * len(rows), "target_class": [cfg.target_class] * len(rows),
        "n": [row[0] for row in rows], "method": [ranked if row[1] == "values" else row[1] for row in rows],
        "value": [row[2] for row in rows], "drop": [row[3] for row in rows],
        "units": [";".join(label[i] for i in np.flatnonzero(row[4])) for row in rows]})


def copy_shapley(draft: Draft, previous: dict) -> ManifestPart:
    """The previous run's importance tables, unit columns and manifest sections, as they were."""
    for table in TABLES:
        draft.table(table, previous[table])
    units = draft.units
    values = [previous["units"].get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for j, column in enumerate(SHAPLEY_COLUMNS + BANZHAF_COLUMNS):
        units[column] = [None if v is None else v[j] for v in values]
    return ManifestPart({"shapley": previous["manifest"]}, previous["settings"])
