"""Table schemas of the catalog (Parquet). New columns are nullable so older files still read.

Every column carries its description in the field's metadata (`doc`): it travels in each Parquet
file's schema, and docs/CATALOG.md is generated from it (`python -m catalog_schema.docs`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schema.columns import LAYER, UNIT, column
from catalog_schema.class_tables import CLASS_CONCEPTS, CLASS_EXAMPLES, CLASSES
from catalog_schema.generator_tables import GENERATOR_INTERVENTIONS, GENERATOR_INTERVENTIONS_DOC
from catalog_schema.relation_tables import CONNECTIONS, SIMILAR


BOX = "of the theoretical receptive field in input pixels (a half-open box clipped to the image; the whole image for [N, C] layers)"

def position(which: str) -> list[pa.Field]:
    """Where in the feature map the example's value is (`which`: "arg-max"...), and its receptive field's box."""
    return [column("y", pa.int32(), f"{which} row in the layer's feature map (0 for [N, C] layers)"),
            column("x", pa.int32(), f"{which} column in the layer's feature map"),
            column("box_y0", pa.int32(), "top row " + BOX),
            column("box_x0", pa.int32(), "left column " + BOX),
            column("box_y1", pa.int32(), "bottom row + 1 " + BOX),
            column("box_x1", pa.int32(), "right column + 1 " + BOX)]


UNITS = pa.schema([
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("act_mean", pa.float32(), "mean activation over every position of every image"),
    column("act_std", pa.float32(), "standard deviation of the activation over every position of every image"),
    column("act_max", pa.float32(), "largest activation over every position of every image"),
    column("act_min", pa.float32(), "smallest activation over every position of every image"),
    column("frac_active", pa.float32(), "fraction of positions (over every image) where the activation is > 0"),
    column("dead", pa.bool_(), "never positive (a ReLU after it would always output 0) or constant"),
    column("nonfinite", pa.int64(), "NaN or infinite activation values seen (read as 0 in the statistics)"),
    column("label", pa.string(), "dissection: the best-matching concept's name (null without the dissection stage or with IoU 0)"),
    column("category", pa.string(), "dissection: that concept's category (color, object, part, material, scene, texture, ...)"),
    column("iou", pa.float32(), "dissection: the best concept's IoU with the unit's thresholded activation"),
    column("interpretable", pa.bool_(), "dissection: iou >= [stages.dissection] iou_threshold"),
    column("purity", pa.float32(), "dissection: share of the unit's 10 top concept images (peak activation) that carry its concept"),
    column("shapley", pa.float32(), "importance: the unit's Shapley value for the metric (null: not a player)"),
    column("shapley_ci_low", pa.float32(), "importance: the lower end of the Shapley value's confidence interval"),
    column("shapley_ci_high", pa.float32(), "importance: the upper end of the Shapley value's confidence interval"),
    column("banzhaf", pa.float32(), "importance: the Banzhaf value (maximum sample reuse) for the same metric"),
    column("banzhaf_ci_low", pa.float32(), "importance: the lower end of the Banzhaf value's confidence interval"),
    column("banzhaf_ci_high", pa.float32(), "importance: the upper end of the Banzhaf value's confidence interval"),
    column("featvis_activation", pa.float32(), "the objective on the stored visualization, no transform"),
    column("featvis_ratio", pa.float32(), "the unit's max on it / its max over the data set (act_max)"),
    column("featvis_flat", pa.bool_(), "the visualization stayed (nearly) uniform"),
    column("erf_size", pa.float32(), "attribution: the empirical receptive field's side in input pixels (the square as "
                                     "large as where the mean occlusion drop is at least half its largest)"),
    column("rf_size", pa.float32(), "attribution: the theoretical receptive field's side in input pixels (the image's "
                                    "for a layer that sees all of it)"),
    column("map_x", pa.float32(), "unit map: the unit's place in its layer's 2-D layout, in [0, 1] (null: no vector, as a dead unit)"),
    column("map_y", pa.float32(), "unit map: the other coordinate; both axes share one scale"),
])

EXAMPLES = pa.schema([
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("sign", pa.string(), "'top' | 'bottom'", required=True),
    column("rank", pa.int32(), "0 = the unit's strongest (top) or weakest (bottom) image", required=True),
    column("image_id", pa.int64(), "the image (images.parquet)", required=True),
    column("activation", pa.float32(), "the unit's spatial maximum (top) or minimum (bottom) on the image"),
    *position("arg-max / arg-min"),
])

SPECTRUM = pa.schema([  # the activation spectrum: examples at evenly spaced quantiles of each unit's spatial maxima
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("quantile", pa.float32(), "the level q_i = (i + 0.5) / Q", required=True),
    column("rank", pa.int32(), "i * spectrum_k + j: by quantile, then nearest first", required=True),
    column("image_id", pa.int64(), "the image (images.parquet)", required=True),
    column("activation", pa.float32(), "the image's spatial max (what top examples rank by)"),
    *position("arg-max"),
    column("quantile_value", pa.float32(), "the empirical quantile (np.quantile, linear) the images are nearest to"),
])

IMAGES = pa.schema([
    column("image_id", pa.int64(), "the image's number: its rank in the sorted list of paths", required=True),
    column("path", pa.string(), "relative to the data root", required=True),
    column("label", pa.string(), "class sub-folder; null for a flat folder"),
    column("label_index", pa.int32(), "the class's index among the sorted class folders; null for a flat folder"),
    column("skipped", pa.bool_(), "the file could not be used (unreadable, truncated, not an image, too many pixels)"),
    column("skip_reason", pa.string(), "why it was skipped"),
])

DISSECTION = pa.schema([  # the top concepts of every category for every unit
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("category", pa.string(), "the concept category of this row"),
    column("rank", pa.int32(), "0 = the unit's best concept in this category"),
    column("concept", pa.string(), "the concept's name (label.csv)"),
    column("concept_number", pa.int32(), "the label's number in the concept data set's label.csv"),
    column("iou", pa.float32(), "intersection / union (NetDissect's IoU)"),
    column("intersection", pa.int64(), "activated pixels on the concept"),
    column("union", pa.int64(), "activated pixels (in images of the category) + concept pixels - intersection"),
    column("threshold", pa.float32(), "the unit's activation threshold (top-quantile)"),
])

SHAPLEY = pa.schema([
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("metric", pa.string(), "what the value is of: 'accuracy' or 'cross_entropy' (minus the mean cross-entropy), as [stages.shapley] metric"),
    column("target_class", pa.int32(), "-1: the metric over every evaluation image; N: over class N's images"),
    column("value", pa.float32(), "the unit's Shapley value (TMC or MSR estimate)"),
    column("ci_low", pa.float32(), "the lower end of the value's confidence interval"),
    column("ci_high", pa.float32(), "the upper end of the value's confidence interval"),
    column("samples", pa.int64(), "marginal contributions sampled (TMC) or coalitions evaluated (MSR)"),
    column("sample_std", pa.float32(), "TMC: the standard deviation of the unit's marginal samples (a warm start's input)"),
    column("sample_range", pa.float32(), "TMC: their largest minus their smallest"),
])
BANZHAF = SHAPLEY  # banzhaf.parquet: the same columns; `samples` = the coalitions evaluated (so in shapley.parquet by MSR)

IMPORTANCE_BY_CLASS = pa.schema([  # each player's value for the metric on one class's evaluation images
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("estimator", pa.string(), "'tmc' or 'msr' (Shapley) | 'banzhaf'", required=True),
    column("metric", pa.string(), "as in shapley.parquet"),
    column("class", pa.int32(), "the class index (the sorted class folders)", required=True),
    column("class_name", pa.string(), "the class folder's name"),
    column("value", pa.float32(), "null: no evaluation image of that class"),
    column("ci_low", pa.float32(), "the lower end of the value's confidence interval"),
    column("ci_high", pa.float32(), "the upper end of the value's confidence interval"),
    column("samples", pa.int64(), "as in shapley.parquet"),
    column("sample_std", pa.float32(), "as in shapley.parquet (TMC only)"),
    column("sample_range", pa.float32(), "as in shapley.parquet (TMC only)"),
])

SHAPLEY_ABLATION = pa.schema([  # the paper's check: the metric after removing N units chosen three ways
    column("metric", pa.string(), "as in shapley.parquet"),
    column("target_class", pa.int32(), "as in shapley.parquet"),
    column("n", pa.int32(), "units removed"),
    column("method", pa.string(), "'shapley' | 'banzhaf' (top-N values of the run's first estimator) | 'single_ablation' (top-N alone) | 'random'"),
    column("value", pa.float32(), "the metric after removal (random: mean over the draws)"),
    column("drop", pa.float32(), "V(all units) - value"),
    column("units", pa.string(), "the removed units, \"layer:unit\" in layer, unit order, joined by ';' (random: the first draw)"),
])

DICTIONARY_QUALITY = pa.schema([  # the dictionary stage: one row per layer given a sparse dictionary
    column("layer", pa.string(), LAYER, required=True),
    column("features", pa.int32(), "the dictionary's size (its features)", required=True),
    column("k", pa.int32(), "active features per position (TopK)", required=True),
    column("channels", pa.int32(), "the layer's units: each position's vector has this many values", required=True),
    column("steps", pa.int32(), "optimizer steps it was trained for"),
    column("vectors", pa.int64(), "training vectors it saw (steps x batch; positions of the training images)"),
    column("eval_vectors", pa.int64(), "positions of the evaluation images the quality columns are measured on"),
    column("explained_variance", pa.float32(), "1 - squared reconstruction error / squared deviation from the mean vector"),
    column("mean_l0", pa.float32(), "active features per position, on average"),
    column("dead_fraction", pa.float32(), "share of features that never fire on the evaluation vectors"),
    column("dense_fraction", pa.float32(), "share of features firing on more than 10% of the evaluation vectors"),
    column("stability", pa.float32(), "mean cosine of the decoder rows matched one-to-one (Hungarian) with a dictionary "
                                      "trained with the next seed; null: not measured (stability = false)"),
    column("loss_recovered", pa.float32(), "the model's cross-entropy on the evaluation images with the layer's output "
                                           "replaced by its reconstruction, between the layer replaced by its mean "
                                           "vector (0) and left as it is (1); null: no class labels"),
    column("accuracy", pa.float32(), "the model's accuracy on the labelled evaluation images, as it is"),
    column("accuracy_reconstructed", pa.float32(), "the same with the layer's output replaced by its reconstruction"),
])

CONCEPTS = pa.schema([  # the concept data set's labels as the dissection used them, with their Broden synonyms
    column("concept_number", pa.int32(), "as in label.csv", required=True),
    column("concept", pa.string(), "the label's name"),
    column("category", pa.string(), "the label's primary category"),
    column("synonyms", pa.string(), "label.csv `syns`: ';'-joined, as there (null: none)"),
])

EVOLUTION = pa.schema([  # `neuron-catalog history`: every unit of every run, matched to its unit in the run before
    column("run", pa.int32(), "0 = the oldest catalog", required=True),
    column("run_name", pa.string(), "the catalog's folder name"),
    column("run_id", pa.string(), "the catalog's run_id (manifest)"),
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("matched_unit", pa.int32(), "its counterpart in the run before (null: the first run, or none)"),
    column("matched_by", pa.string(), "as `diff`: 'index' | 'correlation'"),
    column("activation_corr", pa.float32(), "with its counterpart, on the shared probe images"),
    column("track", pa.int32(), "the unit number in the first run of its chain of matches"),
    column("first_run", pa.int32(), "the run that chain starts in"),
    column("label", pa.string(), "the concept when interpretable, else null"),
    column("category", pa.string(), "the concept's category"),
    column("iou", pa.float32(), "the best concept's IoU"),
    column("label_changed", pa.bool_(), "the interpretable label differs from its counterpart's"),
    column("importance", pa.float32(), "the Shapley value (the Banzhaf value in a run with Banzhaf only)"),
    column("top_jaccard", pa.float32(), "overlap of the top-k example images with its counterpart's (by path)"),
])

DIFF = pa.schema([  # `neuron-catalog diff OLD NEW --out FILE`: one row per unit of NEW (and per unmatched unit of OLD)
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), "the unit in NEW; null: an OLD unit with no counterpart"),
    column("old_unit", pa.int32(), "its counterpart in OLD; null: none"),
    column("matched_by", pa.string(), "'index' (same unit number) | 'correlation' (one-to-one, by probe activations)"),
    column("match_score", pa.float32(), "correlation matching: the pair's activation correlation"),
    column("activation_corr", pa.float32(), "Pearson correlation of the pair's mean activations on the shared probe images"),
    column("label_old", pa.string(), "the interpretable concept in OLD (null: none)"),
    column("label_new", pa.string(), "the interpretable concept in NEW (null: none)"),
    column("label_changed", pa.bool_(), "label_old differs from label_new"),
    column("iou_old", pa.float32(), "the best IoU in OLD"),
    column("iou_new", pa.float32(), "the best IoU in NEW"),
    column("iou_delta", pa.float32(), "iou_new - iou_old"),
    column("shapley_old", pa.float32(), "the Shapley value in OLD"),
    column("shapley_new", pa.float32(), "the Shapley value in NEW"),
    column("shapley_delta", pa.float32(), "shapley_new - shapley_old"),
    column("shapley_rank_old", pa.int32(), "1 = the largest value among the catalog's players"),
    column("shapley_rank_new", pa.int32(), "as shapley_rank_old, in NEW"),
    column("rank_change", pa.int32(), "rank_old - rank_new: positive = more important now"),
    column("top_jaccard", pa.float32(), "overlap of the top-k example images (by path)"),
    column("act_max_old", pa.float32(), "act_max in OLD"),
    column("act_max_new", pa.float32(), "act_max in NEW"),
    column("changed", pa.bool_(), "the unit's behaviour changed: see `reasons`"),
    column("reasons", pa.string(), "why `changed`, ';'-joined"),
])

# What each table holds and which stage or command writes it (docs/CATALOG.md).
TABLE_DOCS: dict[str, str] = {
    "units": "One row per unit of every cataloged layer: the activations stage's statistics, and the columns later "
             "stages fill (null where a stage did not run or the unit is not one of its players).",
    "examples": "activations: each unit's top-k and bottom-k images, ranked by the unit's spatial maximum (top) or "
                "minimum (bottom); ties go to the smaller image_id.",
    "spectrum": "activations: the activation spectrum, each unit's `spectrum_k` images whose spatial maximum is nearest "
                "each of `spectrum_quantiles` (Q) evenly spaced quantiles of its spatial maxima.",
    "images": "The data set's index: every image file found, used or skipped.",
    "dissection": "dissection: each unit's top concepts (`top`, 5) in every category, as Network Dissection scores them.",
    "concepts": "dissection: the concept data set's labels as the dissection used them, with their Broden synonyms.",
    "shapley": "shapley: each player unit's Shapley value (TMC or MSR) with its interval.",
    "banzhaf": "shapley, when Banzhaf values are asked for: the columns of shapley.parquet; `samples` = the coalitions "
               "evaluated.",
    "importance_by_class": "shapley: each player's value for the metric on each class's evaluation images, per estimator.",
    "shapley_ablation": "shapley: the metric after removing N units chosen by value, by single-unit effect or at random "
                        "(Neuron Shapley's check).",
    "similar": "similarity: each unit's nearest units, in its own layer and the layers beside it.",
    "connections": "connections: each unit's strongest inputs in the cataloged layer before it and outputs in the one "
                   "after, by expanded weights (signed).",
    "classes": "class_pages: each class's accuracy on the evaluation images and how much of its vector IBD explains.",
    "class_examples": "class_pages: each class's top images by its logit.",
    "class_concepts": "class_pages: each class's concept decomposition (IBD): the concepts chosen, in order.",
    "generator_interventions": GENERATOR_INTERVENTIONS_DOC,
    "dictionary_quality": "dictionary: how well each layer's sparse dictionary reconstructs the layer, how sparse and "
                          "how stable it is.",
    "diff": "Not in a catalog: `neuron-catalog diff OLD NEW --out FILE` writes it, one row per unit of NEW (and per "
            "unmatched unit of OLD).",
    "evolution": "Not in a catalog: `neuron-catalog history` writes it (evolution.parquet): every unit of every run, "
                 "matched to its unit in the run before.",
}

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
    "connections": CONNECTIONS,
    "classes": CLASSES,
    "class_examples": CLASS_EXAMPLES,
    "class_concepts": CLASS_CONCEPTS,
    "generator_interventions": GENERATOR_INTERVENTIONS,
    "dictionary_quality": DICTIONARY_QUALITY,
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
