"""Making the run's plan on the driver: validate the inputs, survey the model once, cut the data set into
shards, fingerprint what results depend on, and let each stage add its own part."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.generators.job import generated_inputs, latents_file
from pipeline.inputs.batches import Preprocess
from pipeline.inputs.fingerprints import SCHEME, json_fingerprint, model_fingerprint
from pipeline.inputs.images import list_images
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import LayerInfo, build_model, recipe_from_config, resolve_layers
from pipeline.inputs.receptive_field import around_peak, grid_cell, receptive_fields
from pipeline.job.config import JobConfig
from pipeline.job.load import check_inputs_exist
from pipeline.job.prepare import prepare_inputs
from pipeline.plan import RunPlan, Shard, check_catalog_target, shard_size
from pipeline.stages.protocol import Stage


def make_plan(job: JobConfig, stages: Mapping[str, Stage], out: Path | None = None) -> RunPlan:
    """Validate inputs, load the model once to survey its layers, cut the data set into shards, let each of
    `stages` (the run's, in pipeline order) plan its part."""
    names = tuple(stages)
    catalog = (out or job.output.catalog).resolve()
    check_catalog_target(catalog)
    prepared = prepare_inputs(job)
    check_inputs_exist(job)
    recipe = recipe_from_config(job.model)
    model = build_model(recipe)
    sample = None
    if job.latents is not None:
        _refuse_for_generators(stages)
        job, sample = generated_inputs(job, model, catalog)
        prepared["generated_sample"] = {"path": str(sample.root), "images": sample.count, "size": sample.size,
                                        "reused": sample.reused, "fingerprint": sample.fingerprint}
    images = list_images(job.data.images, job.data.limit, job.seed)
    layer_names = resolve_layers(model, job.model.layers)
    if not layer_names:
        raise UserError("model.layers selects no layer: the model has no Conv2d or Linear module; list module paths in [model] layers.")
    m = job.model
    size = sample.size if sample else m.input_size
    input_shape = tuple(job.latents.shape) if sample else (len(m.mean), size, size)
    survey = survey_model(model, layer_names, input_shape, explicit=bool(m.layers), layouts=m.layouts,
                          image_hw=(size, size))
    if not survey.layers:
        raise UserError(f"model.layers: none of the {len(layer_names)} Conv2d and Linear modules can be read: "
                        f"{survey.left_out[0]['why']}. List the module paths to catalog in [model] layers.")
    layers, reads = _with_added_layers(job, stages, model, survey.layers)
    layer_names = [info.name for info in survey.layers]
    prep = Preprocess(size, m.mean, m.std, job.data.batch_size, latents_file(sample) if sample else "")
    per_shard = shard_size(job, prep)
    shards = [Shard(i, images.records[s:s + per_shard]) for i, s in enumerate(range(0, len(images.records), per_shard))]
    if sample:  # a generator's unit draws its grid cell of the image
        fields = {info.name: grid_cell(info.spatial, (size, size)) for info in layers}
    else:
        fields = receptive_fields(model, layer_names, input_shape)
        fields = {info.name: around_peak(fields[reads.get(info.name, (info.name,))[0]], info.spatial, input_shape[1:])
                  for info in layers}
    plan = RunPlan(job, catalog, names, recipe, layers, fields, images, prep, shards, {}, prepared, {},
                   left_out=tuple(survey.left_out))
    parts: dict[str, Any] = {}
    for name in names:
        parts[name] = stages[name].plan(plan, model, survey)
    settings = {"prep": prep.__dict__, "layers": [info.name for info in layers], "seed": job.seed,
                "limit": job.data.limit, **{name: asdict(stages[name].settings(job)) for name in names}}
    layer_fps = {**survey.fingerprints, **{name: json_fingerprint({"reads": survey.fingerprints[source], "added_by": by,
                                                                    "settings": settings[by], "seed": job.seed,
                                                                    "data": images.fingerprint()})
                                           for name, (source, by) in reads.items()}}
    fingerprints = {"scheme": SCHEME, "model": model_fingerprint(model), "layers": layer_fps,
                    "data": images.fingerprint(), "config": json_fingerprint(job.to_dict()),
                    "settings": json_fingerprint(settings)}
    for name in names:
        fingerprints.update(stages[name].fingerprints(parts[name]))
    return replace(plan, parts=parts, fingerprints=fingerprints)


def _refuse_for_generators(stages: Mapping[str, Stage]) -> None:
    """A generator job runs the stages that read units off generated images; the others are refused by name."""
    refused = [name for name, stage in stages.items() if not stage.generators]
    if refused:
        raise UserError(f"stage(s) {', '.join(map(repr, refused))} cannot run on a generator ([latents]): "
                        f"{'; '.join(f'{n}: {stages[n].not_for_generators}' for n in refused)}. Remove their "
                        "[stages.*] tables or leave them out of --stages.")


def _with_added_layers(job: JobConfig, stages: Mapping[str, Stage], model: Any,
                       surveyed: list[LayerInfo]) -> tuple[list[LayerInfo], dict[str, tuple[str, str]]]:
    """The surveyed layers with the layers stages add (a dictionary's features) each right after the layer it reads,
    and added layer -> (the layer it reads, the stage that adds it)."""
    added: dict[str, list[LayerInfo]] = {}
    reads: dict[str, tuple[str, str]] = {}
    for name, stage in stages.items():
        for source, info in stage.added_layers(job, model, surveyed).items():
            added.setdefault(source, []).append(info)
            reads[info.name] = (source, name)
    return [out for info in surveyed for out in (info, *added.get(info.name, ()))], reads

