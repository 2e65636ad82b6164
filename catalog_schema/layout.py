"""The catalog folder's own layout: the names a run leaves beside the tables and the array store.

One definition for every module that writes or reads them (the writer, the runner's checkpoints,
the lock, catalog histories, the check that a target folder is a catalog).
"""

from __future__ import annotations

from pathlib import Path

WORK = ".work"  # checkpoints of an unfinished run: one folder per pass, named <pass>-<key>
STAGING = ".staging"  # the next version of the catalog, written completely before it is moved into place
LOCK = ".lock"  # names the run holding the catalog
STORE_VERSION_PREFIX, STORE_VERSION_SUFFIX = ".arrays-", ".zarr"  # arrays.zarr links to .arrays-<id>.zarr
SHARD_GLOB = "shard-*.pkl"

# The units table's columns, by the stage that fills them.
ACTIVATION_COLUMNS = ("layer", "unit", "act_mean", "act_std", "act_max", "act_min", "frac_active", "dead", "nonfinite")
FEATVIS_COLUMNS = ("featvis_activation", "featvis_ratio", "featvis_flat")
DISSECTION_COLUMNS = ("label", "category", "iou", "interpretable", "purity")
SHAPLEY_COLUMNS = ("shapley", "shapley_ci_low", "shapley_ci_high")
BANZHAF_COLUMNS = ("banzhaf", "banzhaf_ci_low", "banzhaf_ci_high")
MAP_COLUMNS = ("map_x", "map_y")
ATTRIBUTION_COLUMNS = ("erf_size", "rf_size")


def shard_file(index: int) -> str:
    """A finished shard's (or chunk's) checkpoint, inside its pass's folder under WORK."""
    return f"shard-{index:06d}.pkl"


def work_folder(catalog: Path, name: str, key: str) -> Path:
    """The checkpoint folder of one pass; `key` changes with everything the pass depends on."""
    return catalog / WORK / f"{name}-{key[:16]}"


def is_store_version(name: str) -> bool:
    return name.startswith(STORE_VERSION_PREFIX) and name.endswith(STORE_VERSION_SUFFIX)


FEATURES_SUFFIX = "..features"  # a dictionary's features are the layer "<layer>..features" (no module path has an
# empty segment, so no module has that name)


def feature_layer(source: str) -> str:
    """The name of the feature layer of a dictionary over `source`."""
    return source + FEATURES_SUFFIX


def source_of(layer: str) -> str | None:
    """The layer a feature layer's dictionary reads (None for a module's own layer)."""
    return layer[:-len(FEATURES_SUFFIX)] if layer.endswith(FEATURES_SUFFIX) else None
