"""What the shapley stage puts in the catalog: shapley.parquet, shapley_ablation.parquet, the value columns of
the units table (null for units that are not players) and the manifest's shapley section."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from catalog_schema.layout import SHAPLEY_COLUMNS
from pipeline.stages.shapley.estimator import ShapleyOutput
from pipeline.stages.shapley.settings import ShapleySettings

if TYPE_CHECKING:
    from pipeline.catalog.writer import Draft


def write_shapley(draft: Draft, players: tuple[tuple[str, int], ...], cfg: ShapleySettings, out: ShapleyOutput) -> None:
    res, units = out.result, draft.units
    names = [name for name, n in players for _ in range(n)]
    unit_ids = [u for _, n in players for u in range(n)]
    count = len(names)
    draft.table("shapley", {
        "layer": names, "unit": unit_ids, "metric": [cfg.metric] * count, "target_class": [cfg.target_class] * count,
        "value": res.value, "ci_low": res.ci_low, "ci_high": res.ci_high, "samples": res.samples})
    label = [f"{n}:{u}" for n, u in zip(names, unit_ids)]
    draft.table("shapley_ablation", {
        "metric": [cfg.metric] * len(out.ablation), "target_class": [cfg.target_class] * len(out.ablation),
        "n": [row[0] for row in out.ablation], "method": [row[1] for row in out.ablation],
        "value": [row[2] for row in out.ablation], "drop": [row[3] for row in out.ablation],
        "units": [";".join(label[i] for i in np.flatnonzero(row[4])) for row in out.ablation]})
    where = {key: i for i, key in enumerate(zip(names, unit_ids))}
    rows = [where.get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for column, values in zip(SHAPLEY_COLUMNS, (res.value, res.ci_low, res.ci_high)):
        units[column] = [float(values[r]) if r is not None else None for r in rows]  # null: not a player
    draft.manifest["settings"]["shapley"] = asdict(cfg)
    draft.manifest["shapley"] = {
        "players": int(len(res.value)), "layers": [name for name, _ in players],
        "eval_images": out.eval_images, "v_all": res.v_full, "v_none": res.v_none, "rounds": res.rounds,
        "permutations": res.permutations, "evaluations": res.evaluations,
        "unsettled_per_round": [int(u) for _, u in res.history],
    }


def copy_shapley(draft: Draft, previous: dict) -> None:
    """The previous run's Shapley tables, unit columns and manifest sections, as they were."""
    for table in ("shapley", "shapley_ablation"):
        draft.table(table, previous[table])
    units = draft.units
    values = [previous["units"].get((layer, int(unit))) for layer, unit in zip(units["layer"], units["unit"])]
    for j, column in enumerate(SHAPLEY_COLUMNS):
        units[column] = [None if v is None else v[j] for v in values]
    draft.manifest["settings"]["shapley"] = previous["settings"]
    draft.manifest["shapley"] = previous["manifest"]
