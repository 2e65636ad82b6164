"""The class_pages stage: one page's worth per class. An evaluation pass gives each class's accuracy and top images (by
its logit); Grad-CAM (gradcam.py) explains each top image at the layer the classifier reads; IBD (ibd.py) decomposes
the class's vector in that Linear into concept vectors probed on the concept data set, with the residual."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.broden import open_broden
from pipeline.inputs.fingerprints import concepts_fingerprint, json_fingerprint
from pipeline.job.checks import check_exists
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.class_pages.evaluate import EvalPartial, eval_shard
from pipeline.stages.class_pages.head import class_layer, final_linear
from pipeline.stages.class_pages.ibd import ConceptSums, concept_vectors, decompose
from pipeline.stages.class_pages.pictures import class_pictures, concept_shard
from pipeline.stages.class_pages.settings import ClassesSettings
from pipeline.stages.class_pages.results import ClassesPart, ClassesResult
from pipeline.stages.class_pages.write import write_classes
from pipeline.stages.dissection.passes import label_space
from pipeline.stages.dissection.stage import ConceptShard
from pipeline.stages.protocol import WHOLE_MODEL, Context, Driver, LayerInputs, Stage

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan


class ClassPagesStage(Stage[ClassesSettings, ClassesPart, ClassesResult]):
    name = "class_pages"
    not_for_generators = "class pages need a classifier's head and labelled images"
    Settings = ClassesSettings
    needs = (ActivationsStage,)  # every catalog has the activations' units table

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> ClassesPart:
        cfg, classes = self.settings(plan.job), tuple(plan.images.classes)
        if not classes:
            raise UserError("stage 'class_pages' needs labelled images: data.images must hold one folder per class, in the "
                            "order of the model's outputs (sorted names).")
        shape = (len(plan.job.model.mean), plan.prep.input_size, plan.prep.input_size)
        head, linear = final_linear(model, shape)
        if linear.out_features < len(classes):
            raise UserError(f"stage 'class_pages': the model's final Linear {head} has {linear.out_features} outputs for "
                            f"{len(classes)} classes in data.images.")
        layer = class_layer(model, plan.layers, head, cfg.layer, shape)
        broden, shards = None, ()
        if plan.job.concepts.broden is not None:
            check_exists(plan.job, "concepts.broden", plan.job.concepts.broden)
            broden = open_broden(plan.job.concepts.broden, plan.job.concepts.categories)
            ids, size = list(range(len(broden.images))), plan.shard_images
            shards = tuple(ConceptShard(i, tuple(ids[s:s + size])) for i, s in enumerate(range(0, len(ids), size)))
        weight = linear.weight.detach()[: len(classes)].double().cpu().numpy()
        return ClassesPart(layer, head, weight, classes, min(cfg.top, len(plan.images.records)), broden, shards)

    def fingerprints(self, part: ClassesPart) -> dict[str, str]:
        return {"concepts": concepts_fingerprint(part.broden)} if part.broden is not None else {}

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp = plan.fingerprints
        settings = json_fingerprint({"class_pages": asdict(self.settings(plan.job)), "prep": asdict(plan.prep)})
        return {WHOLE_MODEL: {"model": fp["model"], "data": fp["data"], "settings": settings,
                              "concepts": fp.get("concepts", "")}}

    def run(self, ctx: Context[ClassesSettings, ClassesPart, ClassesResult], driver: Driver) -> ClassesResult:
        part, cfg = ctx.part, ctx.settings
        k = len(part.classes)
        evaluated = driver.fan_out("class-pages-eval", "class pages: evaluation", ctx.plan.shards, eval_shard,
                                   lambda _total: (k, part.top), EvalPartial.merged, EvalPartial.empty(k, part.top))
        records = {r.image_id: r for r in ctx.plan.images.records}
        tasks = [(c, tuple(records[int(i)] for i in evaluated.ids[c] if i >= 0)) for c in range(k)]
        pictures = driver.map(class_pictures, tasks, part.layer, cfg.image_size)
        vectors = valid = names = None
        decompositions = []
        if part.broden is not None:
            space, broden = label_space(part.broden), driver.share(part.broden)
            sums = driver.fan_out("class-pages-concepts", "class pages: concept vectors", part.shards, concept_shard,
                                  lambda _total: (broden, part.layer, space), ConceptSums.merged,
                                  ConceptSums.empty(space.size, part.layer.units))
            vectors, valid = concept_vectors(sums)
            names = (space.names, tuple(space.category_names[c] for c in space.category))
            decompositions = [decompose(w, vectors, valid, cfg.concepts) for w in part.weight]
        return ClassesResult(evaluated, pictures, vectors, valid, names, decompositions)

    def write(self, draft: Draft, ctx: Context[ClassesSettings, ClassesPart, ClassesResult],
              result: ClassesResult) -> ManifestPart:
        return write_classes(draft, ctx.part, ctx.settings, result, ctx.plan.images.records)
