"""Comparing two catalogs of one architecture (before and after retraining), unit by unit.

Units are compared through what both catalogs store: probe activations (the same images,
matched by path), labels and IoU, Shapley values and ranks, top example images. A model
retrained from scratch has its units in another order: they are matched one-to-one by
activation correlation (the assignment maximizing total correlation), as in Li et al.,
"Convergent Learning" (ICLR 2016).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

import catalog_schema as cs
from catalog_schema import Catalog
from catalog_schema.storage import write_table_file
from pipeline.errors import UserError

CHANGED_CORR = 0.9  # below this activation correlation a unit counts as changed
CHANGED_JACCARD = 0.5  # below this overlap of top example images a unit counts as changed
AUTO_INDEX_CORR = 0.5  # auto matching keeps unit numbers when their median correlation reaches this
MATCH_MODES = ("auto", "index", "correlation")


@dataclass(frozen=True)
class CatalogDiff:
    units: pd.DataFrame  # the DIFF table's columns
    layers: pd.DataFrame  # one summary row per layer


def diff_catalogs(old: Catalog, new: Catalog, match: str = "auto") -> CatalogDiff:
    """Per unit of NEW (matched to OLD by `match`): what changed; per layer: a summary."""
    if match not in MATCH_MODES:
        raise UserError(f"--match must be one of {', '.join(MATCH_MODES)}, got {match!r}.")
    sides = [_Side(old), _Side(new)]
    rows, summary = [], []
    for layer in new.layers:
        if layer not in old.layers:
            summary.append({"layer": layer, "units_old": 0, "units_new": _count(new, layer), "matched_by": "only in new"})
            continue
        corr, probes = _correlation(sides, layer)
        pairs, how = match_units(corr, match, _count(old, layer), _count(new, layer))
        layer_rows = [_unit_row(layer, o, n, how, corr, sides) for o, n in pairs]
        rows += layer_rows
        frame = _frame(layer_rows)
        summary.append({
            "layer": layer, "units_old": _count(old, layer), "units_new": _count(new, layer), "matched_by": how,
            "probe_images": probes, "median_corr": frame["activation_corr"].median(),
            "changed": int(frame["changed"].sum()), "label_changes": int(frame["label_changed"].fillna(False).sum()),
            "mean_abs_iou_delta": frame["iou_delta"].abs().mean(), "mean_top_jaccard": frame["top_jaccard"].mean(),
        })
    for layer in old.layers:
        if layer not in new.layers:
            summary.append({"layer": layer, "units_old": _count(old, layer), "units_new": 0, "matched_by": "only in old"})
    return CatalogDiff(_frame(rows), pd.DataFrame(summary))


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame typed by the diff schema (numbers stay numeric where some are null)."""
    return cs.to_table("diff", {f.name: [row[f.name] for row in rows] for f in cs.TABLES["diff"]}).to_pandas()


class _Side:
    """One catalog's per-unit facts, indexed by (layer, unit)."""

    def __init__(self, cat: Catalog):
        self.catalog = cat
        units = cat.units()
        self.units = units.set_index(["layer", "unit"])
        images = cat.images()
        self.paths = dict(zip(images["image_id"], images["path"]))
        top = cat.examples()
        top = top[top["sign"] == "top"]
        self.top = {key: {self.paths[i] for i in group["image_id"]} for key, group in top.groupby(["layer", "unit"])}
        values = units.dropna(subset=["shapley"]).sort_values(["shapley", "layer", "unit"], ascending=[False, True, True],
                                                                kind="stable")
        self.rank = {(layer, int(unit)): r + 1 for r, (layer, unit) in enumerate(zip(values["layer"], values["unit"]))}

    def get(self, layer: str, unit: int | None, column: str):
        if unit is None:
            return None
        value = self.units.at[(layer, unit), column]
        return None if pd.isna(value) else value

    def label(self, layer: str, unit: int | None) -> str | None:
        """The unit's concept when it is interpretable, else None."""
        return self.get(layer, unit, "label") if self.get(layer, unit, "interpretable") else None


def _count(cat: Catalog, layer: str) -> int:
    return next(int(info["units"]) for info in cat.manifest["layers"] if info["name"] == layer)


def _correlation(sides: list[_Side], layer: str) -> tuple[np.ndarray | None, int]:
    """Pearson correlation [old units, new units] over the probe images both catalogs hold (by path)."""
    if not all(side.catalog.has_array("probes", layer) for side in sides):
        return None, 0
    columns = []
    for side in sides:
        values, ids = side.catalog.probes(layer)
        columns.append((values, [side.paths[int(i)] for i in ids]))
    return correlate(columns[0], columns[1])


def correlate(old: tuple[np.ndarray, list[str]], new: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray | None, int]:
    """Pearson correlation [old units, new units] of (probe activations [units, m], the probe images' paths) over the
    images both hold, and their number (None below 3 shared images)."""
    shared = sorted(set(old[1]) & set(new[1]))
    if len(shared) < 3:
        return None, len(shared)
    z = []
    for values, paths in (old, new):
        where = {p: i for i, p in enumerate(paths)}
        x = values[:, [where[p] for p in shared]].astype(np.float64)
        x -= x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        z.append(np.divide(x, norm, out=np.full_like(x, np.nan), where=norm > 1e-12 * np.sqrt(len(shared))))
    return z[0] @ z[1].T, len(shared)


def match_units(corr: np.ndarray | None, match: str, n_old: int, n_new: int) -> tuple[list[tuple[int | None, int | None]], str]:
    """Pairs (old unit, new unit) and how they were matched; unmatched units pair with None."""
    same = min(n_old, n_new)
    if match == "correlation" and corr is None:
        raise UserError("--match correlation needs probe activations in both catalogs (probes/<layer>, written since "
                        "re-analysis support) over at least 3 shared images: rerun the older job, or use --match index.")
    if match == "auto":
        if corr is None or n_old != n_new:
            match = "index" if corr is None else "correlation"
        else:
            diagonal = np.diagonal(corr)
            finite = diagonal[np.isfinite(diagonal)]
            match = "index" if finite.size == 0 or np.median(finite) >= AUTO_INDEX_CORR else "correlation"
    if match == "index":
        pairs = [(u, u) for u in range(same)]
    else:
        rows, cols = linear_sum_assignment(np.nan_to_num(corr, nan=-2.0), maximize=True)
        pairs = sorted(((int(o), int(n)) for o, n in zip(rows, cols)), key=lambda p: p[1])
    matched_old, matched_new = {o for o, _ in pairs}, {n for _, n in pairs}
    pairs += [(None, n) for n in range(n_new) if n not in matched_new]
    pairs += [(o, None) for o in range(n_old) if o not in matched_old]
    return pairs, match


def _unit_row(layer: str, o: int | None, n: int | None, how: str, corr: np.ndarray | None, sides: list[_Side]) -> dict:
    old, new = sides
    c = float(corr[o, n]) if corr is not None and o is not None and n is not None and np.isfinite(corr[o, n]) else None
    label_old, label_new = old.label(layer, o), new.label(layer, n)
    iou_old, iou_new = old.get(layer, o, "iou"), new.get(layer, n, "iou")
    sh_old, sh_new = old.get(layer, o, "shapley"), new.get(layer, n, "shapley")
    rank_old, rank_new = old.rank.get((layer, o)), new.rank.get((layer, n))
    top_old, top_new = old.top.get((layer, o), set()), new.top.get((layer, n), set())
    jaccard = len(top_old & top_new) / len(top_old | top_new) if o is not None and n is not None and (top_old | top_new) else None
    both_labelled = o is not None and n is not None and (iou_old is not None or iou_new is not None)
    label_changed = label_old != label_new if both_labelled else None
    reasons = []
    if o is None or n is None:
        reasons.append("no counterpart")
    if c is not None and c < CHANGED_CORR:
        reasons.append(f"activation correlation {c:.2f}")
    if c is None and o is not None and n is not None and bool(old.get(layer, o, "dead")) != bool(new.get(layer, n, "dead")):
        reasons.append("dead in one catalog only")
    if label_changed:
        reasons.append(f"label {label_old or '-'} -> {label_new or '-'}")
    if jaccard is not None and jaccard < CHANGED_JACCARD:
        reasons.append(f"top examples overlap {jaccard:.2f}")
    return {
        "layer": layer, "unit": n, "old_unit": o, "matched_by": how,
        "match_score": c if how == "correlation" else None, "activation_corr": c,
        "label_old": label_old, "label_new": label_new, "label_changed": label_changed,
        "iou_old": iou_old, "iou_new": iou_new, "iou_delta": _delta(iou_new, iou_old),
        "shapley_old": sh_old, "shapley_new": sh_new, "shapley_delta": _delta(sh_new, sh_old),
        "shapley_rank_old": rank_old, "shapley_rank_new": rank_new,
        "rank_change": rank_old - rank_new if rank_old is not None and rank_new is not None else None,
        "top_jaccard": jaccard, "act_max_old": old.get(layer, o, "act_max"), "act_max_new": new.get(layer, n, "act_max"),
        "changed": bool(reasons), "reasons": "; ".join(reasons) or None,
    }


def write_diff(diff: CatalogDiff, out: Path) -> None:
    """The per-unit table as Parquet (schema `diff` of catalog_schema); refuses to write into a directory."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'diff.parquet'}.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path.")
    write_table_file(out, "diff", pa.Table.from_pandas(diff.units, schema=cs.TABLES["diff"], preserve_index=False))


def read_diff(path: Path) -> pd.DataFrame:
    """A `diff --out` file back as the per-unit table; UserError when it is something else."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"--diff {path} is not a Parquet file written by `neuron-catalog diff --out` ({exc}).") from None
    missing = [n for n in cs.TABLES["diff"].names if n not in table.column_names]
    if missing:
        raise UserError(f"--diff {path} lacks the columns {missing}: write it with `neuron-catalog diff OLD NEW --out FILE`.")
    return table.select(cs.TABLES["diff"].names).to_pandas()


def _delta(new, old) -> float | None:
    return None if new is None or old is None else float(new) - float(old)


def format_summary(diff: CatalogDiff, old: Catalog, new: Catalog, limit: int = 10) -> str:
    """The terminal report: a table per layer and the most changed units."""
    lines = [f"diff {old.path} -> {new.path}",
             f"  runs {old.manifest['run_id'][:8]} ({old.manifest['finished']}) -> "
             f"{new.manifest['run_id'][:8]} ({new.manifest['finished']})", ""]
    lines.append(diff.layers.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    units = diff.units
    if len(units):
        changed = units[units["changed"]].sort_values("activation_corr", na_position="first", kind="stable")
        lines += ["", f"{int(units['changed'].sum())} of {len(units)} units changed "
                      f"(activation correlation < {CHANGED_CORR}, interpretable label changed, or top-example overlap "
                      f"< {CHANGED_JACCARD})"]
        if len(changed):
            shown = changed.head(limit)[["layer", "unit", "old_unit", "activation_corr", "label_old", "label_new",
                                         "iou_delta", "shapley_delta", "rank_change", "top_jaccard", "reasons"]]
            lines += ["", shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")]
        moved = units.dropna(subset=["rank_change"])
        if len(moved):
            top = moved.reindex(moved["rank_change"].abs().sort_values(ascending=False, kind="stable").index).head(5)
            lines += ["", "largest Shapley rank changes: " + ", ".join(
                f"{r.layer}:{int(r.unit)} {int(r.shapley_rank_old)}->{int(r.shapley_rank_new)}" for r in top.itertuples())]
    return "\n".join(lines)
