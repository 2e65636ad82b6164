"""Everything decided on the driver before any work is distributed: inputs, layers, fields, shards, fingerprints."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from catalog_schema import MANIFEST, STORE, TABLES
from catalog_schema.tables import table_file
from pipeline.inputs.batches import Preprocess
from pipeline.inputs.broden import Broden, open_broden
from pipeline.job.config import ActivationsConfig, DissectionConfig, FeatvisConfig, JobConfig, ShapleyConfig, check_inputs_exist
from pipeline.errors import UserError
from pipeline.inputs.fingerprints import concepts_fingerprint, json_fingerprint, layer_fingerprints, model_fingerprint
from pipeline.inputs.images import ImageRecord, ImageSet, list_images
from pipeline.inputs.layer_taps import probe_layers
from pipeline.inputs.models import LayerInfo, ModelRecipe, build_model, recipe_from_config, resolve_layers
from pipeline.job.prepare import prepare_inputs
from pipeline.inputs.receptive_field import ReceptiveField, receptive_fields
from pipeline.stages.featvis.render import FeatvisSettings
from pipeline.inputs.first_layer import filter_images, input_convolutions


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
class FeatvisTask:
    """Units of one layer rendered together (whole optimization batches)."""

    index: int
    layer: str
    layer_index: int  # position among the job's layers: part of each image's seed
    units: tuple[int, ...]
    batch: int  # units optimized together: the same for every task of the layer (a short one is padded)


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
    shapley_layers: tuple[tuple[str, int], ...] = ()  # player layers (path, units), when shapley runs
    shapley_eval: tuple[ImageRecord, ...] = ()  # the evaluation images
    featvis: FeatvisSettings | None = None
    featvis_tasks: tuple[FeatvisTask, ...] = ()
    filters: dict | None = None  # layer -> uint8 [units, kh, kw, 3], for layers that convolve the input
    probe_ids: frozenset[int] = frozenset()  # images whose per-unit mean activation is kept for `diff`
    compute: dict[str, tuple[str, ...]] | None = None  # per stage the layers to compute (None: all); others are reused

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.prep.input_size, self.prep.input_size)

    def layers_to_compute(self, stage: str) -> list[LayerInfo]:
        """The stage's layers not reused from a previous catalog, in model order."""
        if self.compute is None:
            return list(self.layers)
        wanted = set(self.compute.get(stage, ()))
        return [info for info in self.layers if info.name in wanted]

    def work_dir(self, stage: str) -> Path:
        """Where finished shards of a stage are checkpointed; keyed by everything they depend on."""
        fp = self.fingerprints
        base = stage.split("-")[0]
        layers = [info.name for info in self.layers_to_compute({"crops": "activations", "projections": "featvis"}.get(base, base))]
        key = json_fingerprint({"stage": stage, "model": fp["model"], "data": fp["data"], "settings": fp["settings"],
                                "concepts": fp.get("concepts"), "shard": len(self.shards[0].records) if self.shards else 0,
                                "layers": layers})
        return self.catalog / ".work" / f"{stage}-{key[:16]}"


def make_plan(job: JobConfig, out: Path | None = None, stages: tuple[str, ...] | None = None) -> RunPlan:
    """Validate inputs, load the model once to choose layers, and cut the data set into shards."""
    stages = tuple(dict.fromkeys(("activations", *(stages or job.stages.requested()))))  # every stage builds on it
    catalog = (out or job.output.catalog).resolve()
    check_catalog_target(catalog)
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
    probe_ids = probe_sample(images.records, activations_config(job).probe_images)
    settings = {"activations": activations_config(job).__dict__, "prep": prep.__dict__,
                "layers": [info.name for info in layers], "seed": job.seed, "limit": job.data.limit}
    broden, concept_shards = None, []
    if "dissection" in stages:
        broden = open_broden(job.concepts.broden, job.concepts.categories)
        ids = list(range(len(broden.images)))
        concept_shards = [ConceptShard(i, tuple(ids[s:s + per_shard])) for i, s in enumerate(range(0, len(ids), per_shard))]
        settings["dissection"] = dissection_config(job).__dict__
    if "shapley" in stages:
        settings["shapley"] = shapley_config(job).__dict__
    if "featvis" in stages:
        settings["featvis"] = featvis_config(job).__dict__
    fingerprints = {
        "model": model_fingerprint(model),
        "layers": layer_fingerprints(model, names, input_shape),
        "data": images.fingerprint(),
        "config": json_fingerprint(job.to_dict()),
        "settings": json_fingerprint(settings),
    }
    if broden is not None:
        fingerprints["concepts"] = concepts_fingerprint(broden)
    shapley_layers, shapley_eval = (), ()
    if "shapley" in stages:
        shapley_layers = player_layers(job, model, layers)
        shapley_eval = eval_records(images, shapley_config(job), job.seed)
        _check_outputs(model, input_shape, images)
    fields = receptive_fields(model, names, input_shape)
    featvis, featvis_tasks, filters = None, (), None
    if "featvis" in stages:
        featvis, featvis_tasks = _featvis_plan(job, model, layers)
        modules = dict(model.named_modules())
        filters = {name: filter_images(modules[name]) for name in input_convolutions(model, names, input_shape)}
    return RunPlan(job, catalog, stages, recipe, layers, fields, images, prep, shards, fingerprints, prepared,
                   broden, concept_shards, shapley_layers, shapley_eval, featvis, featvis_tasks, filters, probe_ids)


def probe_sample(records: tuple[ImageRecord, ...] | list[ImageRecord], n: int) -> frozenset[int]:
    """Image ids of the probe set: the `n` images whose paths hash lowest. It depends on paths only, so two
    catalogs of one data set probe the same images, and an image that stays keeps its place when others change."""
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.path.encode()).digest())
    return frozenset(r.image_id for r in ranked[:n])


def activations_config(job: JobConfig) -> ActivationsConfig:
    """The stage's settings; defaults when the job has no [stages.activations] table."""
    return job.stages.activations or ActivationsConfig()


def dissection_config(job: JobConfig) -> DissectionConfig:
    """The stage's settings; defaults when the job has no [stages.dissection] table."""
    return job.stages.dissection or DissectionConfig()


def featvis_config(job: JobConfig) -> FeatvisConfig:
    """The stage's settings; defaults when the job has no [stages.featvis] table."""
    return job.stages.featvis or FeatvisConfig()


def _featvis_plan(job: JobConfig, model: torch.nn.Module, layers: list[LayerInfo]) -> tuple[FeatvisSettings, tuple]:
    """The render settings and the tasks: each task a whole optimization batch of one layer's units."""
    cfg = featvis_config(job)
    size = cfg.size or min(128, job.model.input_size)
    settings = FeatvisSettings(steps=cfg.steps, size=size, lr=cfg.lr, param=cfg.param, transforms=cfg.transforms,
                               objective=cfg.objective, negative=cfg.negative, diversity=cfg.diversity,
                               batch_units=cfg.batch_units, tv=cfg.tv, blur=cfg.blur, mean=tuple(job.model.mean),
                               std=tuple(job.model.std))
    names = [info.name for info in layers]
    if cfg.layers:
        chosen = set(resolve_layers(model, cfg.layers))
        outside = sorted(chosen - set(names))
        if outside:
            raise UserError(f"stages.featvis.layers selects {', '.join(outside)}, which model.layers does not: "
                            f"choose among {', '.join(names)}.")
        names = [n for n in names if n in chosen]
    most = max(1, cfg.batch_units // len(settings.views()))
    tasks = []
    for layer_index, info in enumerate(layers):
        if info.name in names:
            per_task = -(-info.units // -(-info.units // most))  # as few batches as `most` allows, of even size
            for start in range(0, info.units, per_task):
                units = tuple(range(start, min(start + per_task, info.units)))
                tasks.append(FeatvisTask(len(tasks), info.name, layer_index, units, per_task))
    return settings, tuple(tasks)


def shapley_config(job: JobConfig) -> ShapleyConfig:
    """The stage's settings; defaults when the job has no [stages.shapley] table."""
    return job.stages.shapley or ShapleyConfig()


def player_layers(job: JobConfig, model: torch.nn.Module, layers: list[LayerInfo]) -> tuple[tuple[str, int], ...]:
    """The selected layers whose units are Shapley players (all of them unless [stages.shapley] layers)."""
    wanted = shapley_config(job).layers
    names = [info.name for info in layers]
    if wanted:
        chosen = set(resolve_layers(model, wanted))
        outside = sorted(chosen - set(names))
        if outside:
            raise UserError(f"stages.shapley.layers selects {', '.join(outside)}, which model.layers does not: "
                            f"players must be among {', '.join(names)}.")
        names = [n for n in names if n in chosen]
    return tuple((info.name, info.units) for info in layers if info.name in names)


def eval_records(images: ImageSet, cfg: ShapleyConfig, seed: int) -> tuple[ImageRecord, ...]:
    """A seeded subset of the labelled images (of `target_class` only, when set), in id order."""
    labelled = [r for r in images.records if r.label_index >= 0]
    if not labelled:
        raise UserError(f"stage 'shapley' needs labelled images: data.images {images.root} is a flat folder; "
                        "put the images in one sub-folder per class (ImageFolder), in the model's class order.")
    if cfg.target_class >= 0:
        if cfg.target_class >= len(images.classes):
            raise UserError(f"stages.shapley.target_class = {cfg.target_class}, but data.images has "
                            f"{len(images.classes)} classes (0..{len(images.classes) - 1}: {', '.join(images.classes)}).")
        labelled = [r for r in labelled if r.label_index == cfg.target_class]
    rng = np.random.default_rng([seed, 11])
    pick = np.sort(rng.choice(len(labelled), min(cfg.eval_images, len(labelled)), replace=False))
    return tuple(labelled[i] for i in pick)


def _check_outputs(model: torch.nn.Module, input_shape: tuple[int, int, int], images: ImageSet) -> None:
    """Shapley's metric reads [N, classes] logits indexed like the sorted class folders."""
    with torch.inference_mode():
        out = model(torch.zeros((2, *input_shape)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < len(images.classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"stage 'shapley' scores the model's class outputs, but the model returns {shape} for "
                        f"{len(images.classes)} classes in data.images ({', '.join(images.classes)}): it needs "
                        "[N, classes] logits in the sorted order of the class folders.")


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
    return (name in {table_file(t) for t in TABLES} or name in (STORE, ".work", ".lock", ".staging")
            or (name.startswith(".arrays-") and name.endswith(".zarr")))
