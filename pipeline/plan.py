"""Everything decided on the driver before any work is distributed: inputs, layers, fields, shards, fingerprints."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from catalog_schema import MANIFEST
from pipeline.batches import Preprocess
from pipeline.broden import Broden, open_broden
from pipeline.config import ActivationsConfig, DissectionConfig, JobConfig, check_inputs_exist
from pipeline.errors import UserError
from pipeline.fingerprints import concepts_fingerprint, json_fingerprint, layer_fingerprints, model_fingerprint
from pipeline.images import ImageRecord, ImageSet, list_images
from pipeline.layer_taps import probe_layers
from pipeline.models import LayerInfo, ModelRecipe, build_model, recipe_from_config, resolve_layers
from pipeline.prepare import prepare_inputs
from pipeline.receptive_field import ReceptiveField, receptive_fields

IMPLEMENTED_STAGES = ("activations", "dissection")


@dataclass(frozen=True)
class Shard:
    index: int
    records: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class ConceptShard:
    """Whole global batches of concept images (positions in the Broden index)."""

    index: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class RunPlan:
    job: JobConfig
    catalog: Path
    stages: tuple[str, ...]
    recipe: ModelRecipe
    layers: list[LayerInfo]
    fields: dict[str, ReceptiveField]
    images: ImageSet
    prep: Preprocess
    shards: list[Shard]
    fingerprints: dict
    prepared: dict  # what [prepare] made (demo inputs), recorded in the manifest
    broden: Broden | None = None  # the concept data set, when dissection runs
    concept_shards: list[ConceptShard] = ()

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.prep.input_size, self.prep.input_size)

    def work_dir(self, stage: str) -> Path:
        """Where finished shards of a stage are checkpointed; keyed by everything they depend on."""
        fp = self.fingerprints
        key = json_fingerprint({"stage": stage, "model": fp["model"], "data": fp["data"], "settings": fp["settings"],
                                "concepts": fp.get("concepts"), "shard": len(self.shards[0].records) if self.shards else 0})
        return self.catalog / ".work" / f"{stage}-{key[:16]}"


def make_plan(job: JobConfig, out: Path | None = None, stages: tuple[str, ...] | None = None) -> RunPlan:
    """Validate inputs, load the model once to choose layers, and cut the data set into shards."""
    stages = tuple(dict.fromkeys(("activations", *(stages or job.stages.requested()))))  # every stage builds on it
    unknown = [s for s in stages if s not in IMPLEMENTED_STAGES]
    if unknown:
        raise UserError(f"stage(s) {', '.join(unknown)} are not available in this version of neuron-catalog; "
                        f"available: {', '.join(IMPLEMENTED_STAGES)}. Remove their [stages.*] tables or pass --stages.")
    catalog = (out or job.output.catalog).resolve()
    _check_catalog_target(catalog)
    prepared = prepare_inputs(job)
    check_inputs_exist(job, stages)
    images = list_images(job.data.images, job.data.limit, job.seed)
    recipe = recipe_from_config(job.model)
    model = build_model(recipe)
    names = resolve_layers(model, job.model.layers)
    if not names:
        raise UserError("model.layers selects no layer: the model has no Conv2d or Linear module; list module paths in [model] layers.")
    m = job.model
    input_shape = (len(m.mean), m.input_size, m.input_size)
    layers = probe_layers(model, names, input_shape)
    prep = Preprocess(m.input_size, m.mean, m.std, job.data.batch_size)
    per_shard = math.ceil(job.ray.shard_images / prep.batch_size) * prep.batch_size  # whole batches only
    shards = [Shard(i, images.records[s:s + per_shard]) for i, s in enumerate(range(0, len(images.records), per_shard))]
    settings = {"activations": activations_config(job).__dict__, "prep": prep.__dict__,
                "layers": [info.name for info in layers], "seed": job.seed, "limit": job.data.limit}
    broden, concept_shards = None, []
    if "dissection" in stages:
        broden = open_broden(job.concepts.broden, job.concepts.categories)
        ids = list(range(len(broden.images)))
        concept_shards = [ConceptShard(i, tuple(ids[s:s + per_shard])) for i, s in enumerate(range(0, len(ids), per_shard))]
        settings["dissection"] = dissection_config(job).__dict__
    fingerprints = {
        "model": model_fingerprint(model),
        "layers": layer_fingerprints(model, names, input_shape),
        "data": images.fingerprint(),
        "config": json_fingerprint(job.to_dict()),
        "settings": json_fingerprint(settings),
    }
    if broden is not None:
        fingerprints["concepts"] = concepts_fingerprint(broden)
    fields = receptive_fields(model, names, input_shape)
    return RunPlan(job, catalog, stages, recipe, layers, fields, images, prep, shards, fingerprints, prepared,
                   broden, concept_shards)


def activations_config(job: JobConfig) -> ActivationsConfig:
    """The stage's settings; defaults when the job has no [stages.activations] table."""
    return job.stages.activations or ActivationsConfig()


def dissection_config(job: JobConfig) -> DissectionConfig:
    """The stage's settings; defaults when the job has no [stages.dissection] table."""
    return job.stages.dissection or DissectionConfig()


def _check_catalog_target(catalog: Path) -> None:
    """Refuse to write a catalog into a directory that holds something else."""
    if catalog.exists() and not catalog.is_dir():
        raise UserError(f"output catalog {catalog} is a file; choose a directory path with --out or [output] catalog.")
    if catalog.is_dir() and not (catalog / MANIFEST).exists():
        others = [p for p in os.listdir(catalog) if p != ".work"]
        if others:
            raise UserError(f"output catalog {catalog} is a non-empty directory that is not a catalog "
                            f"(it holds {', '.join(sorted(others)[:3])}...); choose an empty or new directory.")
