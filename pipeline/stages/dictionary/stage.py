"""The dictionary stage: a sparse dictionary (TopK SAE, sae.py) per selected layer, trained on the layer's
per-position vectors streamed from the data set on a model actor, and its quality (quality.py).

One task trains one dictionary from start to end on one actor, with the images in seeded epoch orders: the
same job and seed give the same dictionary whatever the number of workers (as every stage, for a given
`cpus_per_worker`). The stability twin (the next seed) is another task, run beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import catalog_schema as cs
from pipeline.errors import UserError
from pipeline.inputs.batches import Batch, iter_batches
from pipeline.inputs.features import Dictionary, FeatureLayer, feature_layer
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.layouts import WINDOWS
from pipeline.inputs.models import LayerInfo, resolve_layers
from pipeline.stages.dictionary import quality, recovery, sae
from pipeline.stages.dictionary.results import DictionaryPart, DictionaryResult, DictionaryTask
from pipeline.stages.dictionary.settings import DictionarySettings
from pipeline.stages.dictionary.vectors import epochs, layer_vectors, shuffled
from pipeline.stages.dictionary.write import write_dictionary
from pipeline.stages.protocol import Context, Driver, LayerInputs, Shared, Stage, Worker

if TYPE_CHECKING:
    from catalog_schema import Catalog
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.job.config import JobConfig
    from pipeline.plan import RunPlan


HELD_OUT_STREAM = 34  # a fixed number beside the job's seed: the held-out pick's own random stream


class DictionaryStage(Stage[DictionarySettings, DictionaryPart, DictionaryResult]):
    name = "dictionary"
    not_for_generators = "dictionaries over a generator's layers are not built or tested yet"
    Settings = DictionarySettings
    arrays = (cs.DICTIONARY_DECODER, cs.DICTIONARY_ENCODER)

    def added_layers(self, job: JobConfig, model: nn.Module, layers: list[LayerInfo]) -> dict[str, LayerInfo]:
        """Each dictionary's features, a layer `<layer>..features` of the source's layout and grid."""
        cfg = self.settings(job)
        return {info.name: replace(info, name=feature_layer(info.name), shape=(cfg.size(info.units)[0], *info.shape[1:]))
                for info in _chosen(cfg, model, layers)}

    def model_parts(self, result: DictionaryResult) -> dict[str, FeatureLayer]:
        return {feature_layer(name): FeatureLayer(feature_layer(name), result.layouts[name], d)
                for name, d in result.dictionaries.items()}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> DictionaryPart:
        """A task per dictionary (and its stability twin); `eval_images` images (at most half the data set, seeded)
        held out of the training to measure them."""
        cfg = self.settings(plan.job)
        chosen = {info.name for info in _chosen(cfg, model, survey.layers)}
        tasks = []
        for index, info in enumerate(survey.layers):
            if info.name in chosen:
                features, k = cfg.size(info.units)
                for replica in range(1 + cfg.stability):
                    seed = int(np.random.SeedSequence([plan.job.seed, index, replica]).generate_state(1)[0])
                    tasks.append(DictionaryTask(info, sae.TrainSettings(features, k, cfg.steps, cfg.lr, seed), replica))
        records = plan.images.records
        pick = np.random.default_rng([plan.job.seed, HELD_OUT_STREAM]).permutation(len(records))
        held = max(1, min(cfg.eval_images, len(records) // 2)) if len(records) > 1 else 1
        eval_images = tuple(records[i] for i in np.sort(pick[:held]))
        train_images = tuple(records[i] for i in np.sort(pick[held:])) or eval_images
        return DictionaryPart(tuple(tasks), cfg.batch, cfg.buffer, train_images, eval_images)

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp, cfg = plan.fingerprints, self.settings(plan.job)
        settings = json_fingerprint({"dictionary": asdict(cfg), "seed": plan.job.seed})
        chosen = {task.info.name for task in self.part(plan).tasks}
        return {name: {"layer": fp["layers"][name], "data": fp["data"], "settings": settings} for name in chosen}

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> DictionaryResult:
        """The previous catalog's dictionaries of `layers` (the same layer, data, settings and seed) and what it
        measured of them."""
        measured = previous.manifest["dictionary"]["layers"]
        infos = {info.name: info for info in plan.layers}
        return DictionaryResult({name: Dictionary(**previous.dictionary(name)) for name in layers}, {}, {}, {},
                                {name: infos[name].layout for name in layers}, {name: measured[name] for name in layers})

    def run(self, ctx: Context[DictionarySettings, DictionaryPart, DictionaryResult], driver: Driver) -> DictionaryResult:
        part = ctx.part
        wanted = {info.name for info in ctx.plan.layers_to_compute(self.name)}
        tasks = [task for task in part.tasks if task.info.name in wanted]
        shared = driver.share((part.train_images, part.eval_images, part.batch, part.buffer))
        trained = driver.map(train_dictionary, tasks, shared) if tasks else []
        out = ctx.reused or DictionaryResult({}, {}, {}, {})
        for task, (dictionary, measured, scores) in zip(tasks, trained):
            if task.replica == 0:
                out.dictionaries[task.info.name], out.quality[task.info.name] = dictionary, measured
                out.recovery[task.info.name] = scores.summary()
                out.layouts[task.info.name] = task.info.layout
        for task, (dictionary, _, _) in zip(tasks, trained):
            if task.replica == 1:
                matched = quality.matched_cosine(out.dictionaries[task.info.name].decoder, dictionary.decoder)
                out.stability[task.info.name] = float(matched.mean())
        for name in set(out.dictionaries) - set(out.measured):
            out.stability.setdefault(name, None)
        return out

    def write(self, draft: Draft, ctx: Context[DictionarySettings, DictionaryPart, DictionaryResult],
              result: DictionaryResult) -> ManifestPart:
        return write_dictionary(draft, ctx.settings, ctx.part, result)


def _chosen(cfg: DictionarySettings, model: nn.Module, layers: list[LayerInfo]) -> list[LayerInfo]:
    """The surveyed layers [stages.dictionary] layers selects, in model order; refused: a layer model.layers does not
    select, a windowed one."""
    infos = {info.name: info for info in layers}
    chosen = resolve_layers(model, cfg.layers)
    outside = [name for name in chosen if name not in infos]
    if outside:
        raise UserError(f"stages.dictionary.layers selects {', '.join(outside)}, which model.layers does not: "
                        f"choose among {', '.join(infos)}.")
    windowed = [name for name in chosen if infos[name].layout == WINDOWS]
    if windowed:
        raise UserError(f"stages.dictionary.layers: {', '.join(windowed)} outputs windows of the image; choose a "
                        "layer whose positions are the image's grid.")
    return [info for info in layers if info.name in chosen]


def train_dictionary(worker: Worker, task: DictionaryTask,
                     shared: Shared) -> tuple[Dictionary, quality.QualityPartial, recovery.Scores]:
    """On an actor: one dictionary trained on the layer's vectors, its statistics on the evaluation images, and (for
    the cataloged one) the model's loss with the layer reconstructed."""
    train_images, eval_images, batch, buffer = worker.get(shared)
    model = worker.model()
    vectors = epochs(lambda epoch: layer_vectors(model, task.info, _epoch(worker, train_images, task.train.seed, epoch)),
                     buffer)
    try:
        dictionary = sae.train(shuffled(vectors, buffer, batch, task.train.seed), task.train, worker.device)
    except ValueError:
        raise UserError(f"stage 'dictionary': none of the {len(train_images)} training images could be read.") from None
    finally:
        vectors.close()  # takes the reading's hook off the model
    evaluation = lambda: iter_batches(worker.root, _chunks(eval_images, worker.prep.batch_size),  # noqa: E731
                                      worker.prep, [], worker.device)
    measured = layer_vectors(model, task.info, evaluation())
    try:
        stats = quality.measure(dictionary, measured, worker.device)
    finally:
        measured.close()
    if task.replica or not stats.vectors:
        return dictionary, stats, recovery.Scores()
    w = dictionary.tensors(worker.device)
    mean = torch.as_tensor(stats.total / stats.vectors, dtype=torch.float32, device=worker.device)
    labels = {r.image_id: r.label_index for r in eval_images if r.label_index >= 0}
    return dictionary, stats, recovery.scores(model, task.info, evaluation(), labels, lambda v: w.decode(w.encode(v)), mean)


def _epoch(worker: Worker, records: tuple, seed: int, epoch: int) -> Iterator[Batch]:
    """The training images as batches, in the epoch's own seeded order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(records))
    return iter_batches(worker.root, _chunks([records[i] for i in order], worker.prep.batch_size), worker.prep, [],
                        worker.device)


def _chunks(records, size: int) -> list[list]:
    return [list(records[s:s + size]) for s in range(0, len(records), size)]
