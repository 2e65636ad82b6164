"""Table schemas of the catalog (Parquet). New columns are nullable so older files still read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNITS = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("act_mean", pa.float32()),
    pa.field("act_std", pa.float32()),
    pa.field("act_max", pa.float32()),
    pa.field("act_min", pa.float32()),
    pa.field("frac_active", pa.float32()),
    pa.field("dead", pa.bool_()),
    pa.field("nonfinite", pa.int64()),  # NaN or infinite activation values seen (read as 0 in the statistics)
    pa.field("label", pa.string()),
    pa.field("category", pa.string()),
    pa.field("iou", pa.float32()),
    pa.field("interpretable", pa.bool_()),
    pa.field("shapley", pa.float32()),
    pa.field("shapley_ci_low", pa.float32()),
    pa.field("shapley_ci_high", pa.float32()),
    pa.field("banzhaf", pa.float32()),  # the Banzhaf value (maximum sample reuse) for the same metric
    pa.field("banzhaf_ci_low", pa.float32()),
    pa.field("banzhaf_ci_high", pa.float32()),
    pa.field("featvis_activation", pa.float32()),  # the objective on the stored visualization, no transform
    pa.field("featvis_ratio", pa.float32()),  # the unit's max on it / its max over the data set (act_max)
    pa.field("featvis_flat", pa.bool_()),  # the visualization stayed (nearly) uniform
])

EXAMPLES = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("sign", pa.string(), nullable=False),  # 'top' | 'bottom'
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("activation", pa.float32()),
    pa.field("y", pa.int32()),  # arg-max / arg-min position in the layer's feature map
    pa.field("x", pa.int32()),
    pa.field("box_y0", pa.int32()),  # receptive field in input pixels, half-open, clipped
    pa.field("box_x0", pa.int32()),
    pa.field("box_y1", pa.int32()),
    pa.field("box_x1", pa.int32()),
])

SPECTRUM = pa.schema([  # the activation spectrum: examples at evenly spaced quantiles of each unit's spatial maxima
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("quantile", pa.float32(), nullable=False),  # the level q_i = (i + 0.5) / Q
    pa.field("rank", pa.int32(), nullable=False),  # i * spectrum_k + j: by quantile, then nearest first
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("activation", pa.float32()),  # the image's spatial max (what top examples rank by)
    pa.field("y", pa.int32()),  # arg-max position in the layer's feature map
    pa.field("x", pa.int32()),
    pa.field("box_y0", pa.int32()),  # receptive field in input pixels, half-open, clipped
    pa.field("box_x0", pa.int32()),
    pa.field("box_y1", pa.int32()),
    pa.field("box_x1", pa.int32()),
    pa.field("quantile_value", pa.float32()),  # the empirical quantile (np.quantile, linear) the images are nearest to
])

IMAGES = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # relative to the data root
    pa.field("label", pa.string()),  # class sub-folder; null for a flat folder
    pa.field("label_index", pa.int32()),
    pa.field("skipped", pa.bool_()),
    pa.field("skip_reason", pa.string()),
])

DISSECTION = pa.schema([  # the top concepts of every category for every unit
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("category", pa.string()),
    pa.field("rank", pa.int32()),  # 0 = the unit's best concept in this category
    pa.field("concept", pa.string()),
    pa.field("concept_number", pa.int32()),  # the label's number in the concept data set's label.csv
    pa.field("iou", pa.float32()),
    pa.field("intersection", pa.int64()),  # activated pixels on the concept
    pa.field("union", pa.int64()),  # activated pixels (in images of the category) + concept pixels - intersection
    pa.field("threshold", pa.float32()),  # the unit's activation threshold (top-quantile)
])

SHAPLEY = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("metric", pa.string()),
    pa.field("target_class", pa.int32()),
    pa.field("value", pa.float32()),
    pa.field("ci_low", pa.float32()),
    pa.field("ci_high", pa.float32()),
    pa.field("samples", pa.int64()),
    pa.field("sample_std", pa.float32()),  # TMC: the standard deviation of the unit's marginal samples (a warm start's input)
    pa.field("sample_range", pa.float32()),  # TMC: their largest minus their smallest
])

BANZHAF = SHAPLEY  # banzhaf.parquet: the same columns; `samples` = the coalitions evaluated (so in shapley.parquet by MSR)

IMPORTANCE_BY_CLASS = pa.schema([  # each player's value for the metric on one class's evaluation images
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("estimator", pa.string(), nullable=False),  # 'tmc' or 'msr' (Shapley) | 'banzhaf'
    pa.field("metric", pa.string()),
    pa.field("class", pa.int32(), nullable=False),  # the class index (the sorted class folders)
    pa.field("class_name", pa.string()),
    pa.field("value", pa.float32()),  # null: no evaluation image of that class
    pa.field("ci_low", pa.float32()),
    pa.field("ci_high", pa.float32()),
    pa.field("samples", pa.int64()),
    pa.field("sample_std", pa.float32()),  # as in shapley.parquet (TMC only)
    pa.field("sample_range", pa.float32()),
])

SHAPLEY_ABLATION = pa.schema([  # the paper's check: the metric after removing N units chosen three ways
    pa.field("metric", pa.string()),
    pa.field("target_class", pa.int32()),
    pa.field("n", pa.int32()),  # units removed
    pa.field("method", pa.string()),  # 'shapley' | 'banzhaf' (top-N values of the run's first estimator) | 'single_ablation' (top-N alone) | 'random'
    pa.field("value", pa.float32()),  # the metric after removal (random: mean over the draws)
    pa.field("drop", pa.float32()),  # V(all units) - value
    pa.field("units", pa.string()),  # the removed units, "layer:unit" in layer, unit order, joined by ';' (random: the first draw)
])

SIMILAR = pa.schema([  # the similarity stage: each unit's nearest units, per compared layer and kind
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("other_layer", pa.string(), nullable=False),  # the same layer, or the one just before or after it
    pa.field("other_unit", pa.int32(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # 'activation' (Pearson, probe images) | 'weight' (cosine, same layer)
    pa.field("score", pa.float32()),
    pa.field("rank", pa.int32()),  # 0 = the nearest of its (other_layer, kind)
])

CONCEPTS = pa.schema([  # the concept data set's labels as the dissection used them, with their Broden synonyms
    pa.field("concept_number", pa.int32(), nullable=False),  # as in label.csv
    pa.field("concept", pa.string()),
    pa.field("category", pa.string()),  # the label's primary category
    pa.field("synonyms", pa.string()),  # label.csv `syns`: ';'-joined, as there (null: none)
])

EVOLUTION = pa.schema([  # `neuron-catalog history`: every unit of every run, matched to its unit in the run before
    pa.field("run", pa.int32(), nullable=False),  # 0 = the oldest catalog
    pa.field("run_name", pa.string()),  # the catalog's folder name
    pa.field("run_id", pa.string()),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("matched_unit", pa.int32()),  # its counterpart in the run before (null: the first run, or none)
    pa.field("matched_by", pa.string()),  # as `diff`: 'index' | 'correlation'
    pa.field("activation_corr", pa.float32()),  # with its counterpart, on the shared probe images
    pa.field("track", pa.int32()),  # the unit number in the first run of its chain of matches
    pa.field("first_run", pa.int32()),  # the run that chain starts in
    pa.field("label", pa.string()),  # the concept when interpretable, else null
    pa.field("category", pa.string()),
    pa.field("iou", pa.float32()),
    pa.field("label_changed", pa.bool_()),  # the interpretable label differs from its counterpart's
    pa.field("importance", pa.float32()),  # the Shapley value (the Banzhaf value in a run with Banzhaf only)
    pa.field("top_jaccard", pa.float32()),  # overlap of the top-k example images with its counterpart's (by path)
])

DIFF = pa.schema([  # `neuron-catalog diff OLD NEW --out FILE`: one row per unit of NEW (and per unmatched unit of OLD)
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32()),  # the unit in NEW; null: an OLD unit with no counterpart
    pa.field("old_unit", pa.int32()),  # its counterpart in OLD; null: none
    pa.field("matched_by", pa.string()),  # 'index' (same unit number) | 'correlation' (one-to-one, by probe activations)
    pa.field("match_score", pa.float32()),  # correlation matching: the pair's activation correlation
    pa.field("activation_corr", pa.float32()),  # Pearson correlation of the pair's mean activations on the shared probe images
    pa.field("label_old", pa.string()),
    pa.field("label_new", pa.string()),
    pa.field("label_changed", pa.bool_()),
    pa.field("iou_old", pa.float32()),
    pa.field("iou_new", pa.float32()),
    pa.field("iou_delta", pa.float32()),
    pa.field("shapley_old", pa.float32()),
    pa.field("shapley_new", pa.float32()),
    pa.field("shapley_delta", pa.float32()),
    pa.field("shapley_rank_old", pa.int32()),  # 1 = the largest value among the catalog's players
    pa.field("shapley_rank_new", pa.int32()),
    pa.field("rank_change", pa.int32()),  # rank_old - rank_new: positive = more important now
    pa.field("top_jaccard", pa.float32()),  # overlap of the top-k example images (by path)
    pa.field("act_max_old", pa.float32()),
    pa.field("act_max_new", pa.float32()),
    pa.field("changed", pa.bool_()),  # the unit's behaviour changed: see `reasons`
    pa.field("reasons", pa.string()),  # why `changed`, ';'-joined
])

TABLES: dict[str, pa.Schema] = {
    "units": UNITS,
    "examples": EXAMPLES,
    "spectrum": SPECTRUM,
    "images": IMAGES,
    "dissection": DISSECTION,
    "shapley": SHAPLEY,
    "shapley_ablation": SHAPLEY_ABLATION,
    "banzhaf": BANZHAF,
    "importance_by_class": IMPORTANCE_BY_CLASS,
    "diff": DIFF,
    "similar": SIMILAR,
    "concepts": CONCEPTS,
    "evolution": EVOLUTION,
}


def table_file(name: str) -> str:
    """File name of a table inside a catalog."""
    return f"{name}.parquet"


def to_table(name: str, columns: dict) -> pa.Table:
    """Build a table of the named schema; missing nullable columns become nulls."""
    schema = TABLES[name]
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise KeyError(f"columns not in the {name} schema: {sorted(unknown)}")
    return pa.Table.from_arrays(arrays, schema=schema)


def from_table(table: pa.Table, name: str) -> np.ndarray:
    """A column as `to_table` takes it: a numpy array, or an object array with None where the column is null
    (a null stays a null and a NaN a NaN when the column is written again)."""
    values = table.column(name)
    if values.null_count:
        return np.array(values.to_pylist(), dtype=object)
    return values.to_numpy()


def rows_of_layer(table: pa.Table, layer: str) -> pa.Table:
    """The rows of one layer, in file order."""
    return table.filter(pc.equal(table.column("layer"), layer))
