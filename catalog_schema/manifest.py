"""The manifest: what a catalog holds and how it was made. Written last; its presence marks a complete catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"  # in a catalog history (catalog/<UTC time>/...): the symlink to the newest finished catalog

# Every top-level key a manifest can have (values are plain JSON), with what it holds; docs/CATALOG.md lists them.
MANIFEST_KEYS: dict[str, str] = {
    "schema_version": "the catalog format's version (SCHEMA_VERSION); a reader refuses a newer one",
    "run_id": "a random hex id of the run that wrote the catalog",
    "started": "when the run began (ISO 8601, UTC)",
    "finished": "when its computation ended, before the catalog was written (ISO 8601, UTC)",
    "wall_seconds": "[{step, seconds}]: each step's wall time (prepare and plan, ray start, every stage)",
    "host": "the driver's host name",
    "python": "the driver's Python version",
    "job": "the validated job file, every key with its value (defaults filled in)",
    "job_file": "the job file's path",
    "model": "{kind, name, input_size, channels}: how the model was built",
    "prepared": "what the job's [prepare] section made before the run (the demo's concept world, model, generator and "
                "segmenter), and a generator job's generated_sample {path, images, size, reused, fingerprint}; else {}",
    "fingerprints": "hashes of what the results depend on: {scheme, model, layers: {layer: hash}, data, concepts, config, "
                    "settings, inputs: {stage: {layer or '*': {input: hash}}}}; a later run compares `inputs` to reuse results",
    "stages_done": "the stages whose results the catalog holds, in pipeline order",
    "settings": "each stage's settings as used ({preprocess, activations, featvis, dissection, shapley, similarity, dictionary})",
    "layers": "[{name, units, shape, layout, prefix_tokens, receptive_field: {size, jump, offset, exact, whole_image, "
              "around_peak}, dead_units, interpretable_units, unique_concepts}]: the cataloged layers in model order; "
              "shape is units first, [C, H, W] or [C], whatever the layout (nchw, nhwc, tokens, windows, nc), H x W a token "
              "layer's patch grid, prefix_tokens its tokens before the grid; around_peak: crops are half the image's "
              "side around the peak patch, where the field could not be analysed (attention)",
    "layers_left_out": "[{name, shape, layout, why}]: modules of the default selection (every Conv2d and Linear) whose "
                       "units are not cataloged: never run by the forward, an output whose layout cannot be told, or windows of "
                       "the image whose mapping back to the grid this version does not read",
    "data": "{root, images, used, skipped: [{image_id, path, reason}], classes}: the data set",
    "summary": "{layers, units, dead_units, nonfinite_units, interpretable_units, unique_concepts}",
    "errors": "messages of problems the run went on after",
    "reuse": "{previous, previous_run_id, stages: {stage: {layer or '*': {action: reused|computed, why}}}}: re-analysis",
    "concepts": "dissection: {root, categories, labels, images, used, ignored_columns, ignored_rows, skipped}: the concept data set",
    "featvis": "featvis: {views, size, layers, flat_units, projections_caveat}; projections_caveat (null for a ReLU "
               "network) says what the deconvnet and guided-backprop maps are on a model with other nonlinearities",
    "shapley": "importance: the players, estimators, evaluations, rounds, v_all / v_none (the metric with every / no "
               "player) overall and by class, the bandit's progress, the warm start",
    "similarity": "similarity: {probe_images, comparisons: [{layer, other_layer, kind}], layers: units without neighbours}",
    "connections": "connections: {pairs: [{earlier, later}]}: the consecutive cataloged layers connected (a later layer "
                   "that does not read the earlier one has none)",
    "class_pages": "class pages: {layer (Grad-CAM's and IBD's), head (the final Linear), top, image_size, ibd: {steps, concepts "
               "(with a vector), mean_residual} or null without a concept data set}",
    "attribution": "attribution: {layers: {layer: {gradcam_layer, sanity: {method: {rank_correlation, passes, "
                   "examples}}}}, "
                   "examples, occluder, stride, max_correlation}: the model-randomization check per layer and method",
    "unit_map": "unit map: {layer: {method (pacmap | pca | none), vectors (probe activations | decoder directions), placed}}: "
           "how each layer's units were laid out (units columns map_x, map_y)",
    "interventions": "interventions (a generator): {layers: {layer: {region (y0, x0, y1, x1 on the grid), concepts: "
                     "[{concept, present, absent, strip_units}]}}, examples}",
    "dictionary": "dictionary: {layers: {layer: dictionary_quality's row and firing_histogram (features per log10 "
                  "firing-frequency bin, dead ones in none)}, histogram_log10_edges, train_images, eval_images}",
}
REQUIRED_KEYS = ("schema_version", "run_id", "started", "finished", "job", "fingerprints", "stages_done", "layers", "data")


class CatalogError(Exception):
    """The directory is not a catalog this code can read; the message says why and what to do."""


def read_manifest(catalog: Path) -> dict[str, Any]:
    path = Path(catalog) / MANIFEST
    if not path.is_file():
        raise CatalogError(f"{catalog} is not a catalog: {MANIFEST} is missing (an interrupted run leaves none; run it again).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} is not valid JSON ({exc}); the catalog is damaged: run the job again.") from None
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CatalogError(
            f"{catalog} has catalog schema version {version!r}, newer than this neuron-catalog understands "
            f"({SCHEMA_VERSION}): upgrade neuron-catalog to read it."
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CatalogError(f"{path} lacks the keys {missing}; the catalog is damaged: run the job again.")
    return manifest
