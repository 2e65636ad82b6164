"""The featvis stage: per unit an optimized image that excites it (and one that inhibits it), the projections of
its top examples back to pixels (deconvnet, guided backprop), and the filters of layers that read the input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import catalog_schema as cs
from catalog_schema import Catalog
from catalog_schema.layout import FEATVIS_COLUMNS
from catalog_schema.tables import from_table, rows_of_layer
from pipeline.inputs.batches import iter_batches
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.models import LayerInfo, select_among
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.activations.stage import settings_hash as activations_hash
from pipeline.stages.featvis import optimize, projections
from pipeline.stages.featvis.filters import filter_images
from pipeline.stages.featvis.latent import visualize_latent
from pipeline.stages.featvis.relu_rules import projection_caveat
from pipeline.stages.featvis.results import FeatvisPart, FeatvisResult, FeatvisTask
from pipeline.stages.featvis.settings import FeatvisSection, FeatvisSettings
from pipeline.stages.featvis.transforms import Transforms
from pipeline.stages.featvis.write import write_featvis
from pipeline.stages.image_chunks import ImageChunk, image_chunks, merge_by_layer
from pipeline.stages.protocol import Context, Driver, LayerInputs, Stage, Worker

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan


class FeatvisStage(Stage[FeatvisSection, FeatvisPart, FeatvisResult]):
    name = "featvis"
    generators = True  # a generator's latent is optimized for the unit (latent.py); no projections
    Settings = FeatvisSection
    needs = (ActivationsStage,)  # the projections start from the top examples
    reasons = {"activations": "the activations stage's settings changed"}
    arrays = (cs.PROJECTIONS,)

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> FeatvisPart:
        job, cfg = plan.job, self.settings(plan.job)
        if job.latents is not None:
            settings = FeatvisSettings(**{**cfg.__dict__, "size": cfg.size or min(128, plan.prep.input_size),
                                          "mean": tuple(job.model.mean), "std": tuple(job.model.std),
                                          "latent": tuple(job.latents.shape), "distribution": job.latents.distribution})
            return FeatvisPart(settings, _tasks(plan.layers, _rendered_layers(model, cfg, plan.layers), settings), {})
        size = cfg.size or min(128, job.model.input_size)
        settings = FeatvisSettings(**{**cfg.__dict__, "size": size, "mean": tuple(job.model.mean), "std": tuple(job.model.std),
                                      "input_size": 0 if takes_any_size(model, size + 2 * Transforms().pad, len(job.model.mean))
                                      else job.model.input_size})
        modules = dict(model.named_modules())
        filters = {name: filter_images(modules[name]) for name in survey.input_convolutions}
        return FeatvisPart(settings, _tasks(plan.layers, _rendered_layers(model, cfg, plan.layers), settings), filters,
                           projection_caveat(model))

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp, part = plan.fingerprints, self.part(plan)
        rendered = {task.layer for task in part.tasks}
        return {info.name: {"layer": fp["layers"][info.name], "data": fp["data"], "activations": activations_hash(plan),
                            "settings": json_fingerprint({"featvis": part.settings.described(), "layer_index": i,
                                                          "rendered": info.name in rendered, "seed": plan.job.seed})}
                for i, info in enumerate(plan.layers)}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> FeatvisResult:
        units = previous.arrow("units")
        columns = {}
        for name in layers:
            rows = rows_of_layer(units, name).sort_by("unit")
            columns[name] = {c: from_table(rows, c) for c in FEATVIS_COLUMNS}
        return FeatvisResult({}, {}, columns, previous)

    def run(self, ctx: Context[FeatvisSection, FeatvisPart, FeatvisResult], driver: Driver) -> FeatvisResult:
        plan, out = ctx.plan, ctx.reused or FeatvisResult({}, {})
        settings, seed = ctx.part.settings, plan.job.seed
        wanted = {info.name for info in plan.layers_to_compute(self.name)}
        tasks = [t for t in ctx.part.tasks if t.layer in wanted]
        out.rendered = driver.fan_out("featvis", "feature visualization", tasks, render_task,
                                      lambda _total: (settings, seed), lambda a, b: {**a, **b}, {})
        if settings.latent:  # a generator: no image to project its top examples back to
            return out
        with driver.timed("projections"):
            activations = ctx.result_of(ActivationsStage)
            requests = projections.top_example_requests(activations.layers,
                                                        [info.name for info in plan.layers_to_compute("featvis")])
            asked = [info for info in plan.layers if info.name in {req.layer for req in requests}]
            patch = activations.patch
            out.projection_shape = (activations.k, patch)
            chunks = image_chunks(plan.images.records, requests, plan.prep.batch_size)
            out.projected = driver.fan_out("projections", "projections", chunks, chunk_projections,
                                           lambda _total: (asked, patch), merge_by_layer, {})
        return out

    def write(self, draft: Draft, ctx: Context[FeatvisSection, FeatvisPart, FeatvisResult],
              result: FeatvisResult) -> ManifestPart:
        return write_featvis(draft, ctx.plan, result, ctx.part)


def takes_any_size(model: nn.Module, size: int, channels: int) -> bool:
    """Whether the model runs on a `size` px image as well as on its input size (a ViT's position embeddings fix
    its input size: featvis then resizes every transformed image to it)."""
    try:
        with torch.inference_mode():
            model(torch.zeros(1, channels, size, size))
    except Exception:  # noqa: BLE001 - any refusal means: feed it its own size
        return False
    return True


def _rendered_layers(model: nn.Module, cfg: FeatvisSection, layers: list[LayerInfo]) -> list[str]:
    """The layers to render: [stages.featvis] layers (among model.layers and the dictionaries' features), else all."""
    names = [info.name for info in layers]
    return select_among(model, cfg.layers, names, "stages.featvis.layers") if cfg.layers else names


def _tasks(layers: list[LayerInfo], names: list[str], settings: FeatvisSettings) -> tuple[FeatvisTask, ...]:
    """Each task a whole optimization batch of one layer's units: as few batches as `batch_units` allows, of even size."""
    most = max(1, settings.batch_units // len(settings.views()))
    tasks: list[FeatvisTask] = []
    for layer_index, info in enumerate(layers):
        if info.name in names:
            per_task = -(-info.units // -(-info.units // most))
            for start in range(0, info.units, per_task):
                units = tuple(range(start, min(start + per_task, info.units)))
                tasks.append(FeatvisTask(len(tasks), info, layer_index, units, per_task))
    return tuple(tasks)


def render_task(worker: Worker, task: FeatvisTask, settings: FeatvisSettings, seed: int) -> dict[int, optimize.FeatvisChunk]:
    """On an actor: one task's units rendered, keyed by the task's index."""
    if settings.latent:
        n, padded = len(task.units), list(task.units) + [task.units[-1]] * (task.batch - len(task.units))
        c = visualize_latent(worker.model(), task.info, task.layer_index, padded, settings, seed, worker.device)
        return {task.index: optimize.FeatvisChunk(c.layer, c.units[:n], c.images[:n], c.objective[:n], c.peak[:n],
                                                  c.flat[:n])}
    chunk = optimize.visualize(worker.model(), task.layer, task.layer_index, list(task.units), settings, seed, worker.device,
                               task.batch, task.info)
    return {task.index: chunk}


def chunk_projections(worker: Worker, chunk: ImageChunk, layers: list[LayerInfo],
                      patch: int) -> dict[str, list[projections.ProjectionBatch]]:
    """On an actor: both projections of every request of one chunk of images."""
    batches = iter_batches(worker.root, [list(chunk.records)], worker.prep, [], worker.device)
    return {layer: [b] for layer, b in projections.project(worker.model(), layers, batches, list(chunk.requests), patch).items()}
