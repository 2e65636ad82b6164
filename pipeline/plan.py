"""The run's plan: everything decided on the driver before any work is distributed (inputs, layers, fields,
shards, fingerprints, each stage's own part). pipeline/planning.py makes it; stages read it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog_schema import MANIFEST, STORE, TABLES
from catalog_schema.layout import LOCK, STAGING, WORK, is_store_version, work_folder
from catalog_schema.tables import table_file
from pipeline.errors import UserError
from pipeline.inputs.batches import Preprocess
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.images import ImageSet
from pipeline.inputs.models import LayerInfo, ModelRecipe
from pipeline.inputs.receptive_field import ReceptiveField
from pipeline.job.config import JobConfig


@dataclass(frozen=True)
class Shard:
    """Whole batches of the data set's images."""

    index: int
    records: tuple


@dataclass(frozen=True)
class RunPlan:
    job: JobConfig
    catalog: Path
    stages: tuple[str, ...]  # the stages this run makes, in pipeline order
    recipe: ModelRecipe
    layers: list[LayerInfo]
    fields: dict[str, ReceptiveField]
    images: ImageSet
    prep: Preprocess
    shards: list[Shard]
    fingerprints: dict
    prepared: dict  # what [prepare] made (demo inputs), recorded in the manifest
    parts: dict[str, Any]  # stage name -> the stage's own part of the plan
    compute: dict[str, tuple[str, ...]] | None = None  # per stage the layers to compute (None: all); others are reused
    left_out: tuple[dict, ...] = ()  # modules of the default selection whose units are not read, and why

    @property
    def shard_images(self) -> int:
        return shard_size(self.job, self.prep)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.prep.input_size, self.prep.input_size)

    def layers_to_compute(self, stage: str) -> list[LayerInfo]:
        """The stage's layers not reused from a previous catalog, in model order."""
        if self.compute is None:
            return list(self.layers)
        wanted = set(self.compute.get(stage, ()))
        return [info for info in self.layers if info.name in wanted]

    def work_dir(self, name: str, stage: str) -> Path:
        """Where the finished shards of the pass `name` of `stage` are checkpointed; keyed by what they depend on."""
        fp = self.fingerprints
        layers = [info.name for info in self.layers_to_compute(stage)]
        key = json_fingerprint({"stage": name, "scheme": fp.get("scheme"), "model": fp["model"], "data": fp["data"],
                                "settings": fp["settings"],
                                "concepts": fp.get("concepts"), "shard": len(self.shards[0].records) if self.shards else 0,
                                "layers": layers})
        return work_folder(self.catalog, name, key)



def shard_size(job: JobConfig, prep: Preprocess) -> int:
    """Images per shard: [ray] shard_images rounded up to whole batches."""
    return math.ceil(job.ray.shard_images / prep.batch_size) * prep.batch_size


def check_catalog_target(catalog: Path) -> None:
    """Refuse to write a catalog into a directory that holds something else."""
    if catalog.exists() and not catalog.is_dir():
        raise UserError(f"output catalog {catalog} is a file; choose a directory path with --out or [output] catalog.")
    if catalog.is_dir() and not (catalog / MANIFEST).exists():
        others = [p for p in os.listdir(catalog) if not _catalog_part(p)]
        if others:
            raise UserError(f"output catalog {catalog} is a non-empty directory that is not a catalog "
                            f"(it holds {', '.join(sorted(others)[:3])}...); choose an empty or new directory.")


def _catalog_part(name: str) -> bool:
    """A file a run (perhaps one killed before its manifest was written) leaves in a catalog directory."""
    return name in {table_file(t) for t in TABLES} or name in (STORE, WORK, LOCK, STAGING) or is_store_version(name)
