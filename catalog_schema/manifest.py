"""The manifest: what a catalog holds and how it was made. Written last; its presence marks a complete catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"  # in a catalog history (catalog/<UTC time>/...): the symlink to the newest finished catalog

# Keys every manifest has (values are plain JSON):
#   schema_version, run_id, started, finished (ISO 8601 UTC), job (the validated job config),
#   fingerprints: {model, layers: {layer: hash}, data, concepts, config},
#   stages_done: [stage names], layers: [{name, units, shape, receptive_field: {...}}],
#   data: {root, images, used, skipped: [{image_id, path, reason}], classes},
#   summary: {units, dead_units, ...}, errors: [messages],
#   reuse: {previous, previous_run_id, stages: {stage: {layer | "*": {action: reused|computed, why}}}};
#   fingerprints.inputs: {stage: {layer | "*": {input: hash}}} is what a later run compares to reuse results
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
