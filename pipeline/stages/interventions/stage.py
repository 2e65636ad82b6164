"""The interventions stage (GAN Dissection's causal test of a generator's units): per cataloged layer and concept,
the concept's pixels after switching off its top n units by IoU (n = 1..max_units) on images where it is present,
against n random units, and after switching them on in a square of the grid on images where it is absent.
One task per (layer, concept), on the model actors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from pipeline.errors import UserError
from pipeline.generators.segmenter import SegmenterSpec, segmenter_spec
from pipeline.inputs.fingerprints import json_fingerprint
from pipeline.inputs.layouts import NCHW
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations.stage import ActivationsStage
from pipeline.stages.dissection.stage import DissectionStage
from pipeline.stages.interventions.choose import concept_pixels, tasks_of_layer
from pipeline.stages.interventions.edit import Outcome, intervene
from pipeline.stages.interventions.settings import InterventionsSettings
from pipeline.stages.interventions.write import write_interventions
from pipeline.stages.protocol import Context, Driver, LayerInputs, Stage

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.plan import RunPlan


@dataclass(frozen=True)
class InterventionsPart:
    segmenter: SegmenterSpec
    layers: tuple[LayerInfo, ...]


class InterventionsStage(Stage[InterventionsSettings, InterventionsPart, list]):
    name = "interventions"
    generators = True
    Settings = InterventionsSettings
    needs = (ActivationsStage, DissectionStage)  # units are ranked by their IoU with the concept

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> InterventionsPart:
        job = plan.job
        if job.latents is None or not job.concepts.segmenter:
            raise UserError("stage 'interventions' edits a generator's units and counts a concept's pixels in what it "
                            "draws: it needs [latents] (a generator job) and [concepts] segmenter.")
        wanted = self.settings(job).layers
        by_name = {info.name: info for info in plan.layers}
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            raise UserError(f"job key 'stages.interventions.layers' names {unknown}, which are not cataloged layers "
                            f"({', '.join(by_name)}).")
        chosen = [by_name[n] for n in wanted] if wanted else [i for i in plan.layers if i.spatial != (1, 1)]
        flat = [info.name for info in chosen if info.layout != NCHW or info.spatial == (1, 1)]
        if flat:
            raise UserError(f"stage 'interventions': layer(s) {flat} have no [N, C, H, W] grid to insert into; list "
                            "convolutional layers in [stages.interventions] layers.")
        shared = [info.name for info in chosen if info.calls != 1]
        if shared:
            raise UserError(f"stage 'interventions': module(s) {shared} run more than once per forward, so an edit "
                            "would change every call; list modules the generator calls once.")
        return InterventionsPart(segmenter_spec(job)[0], tuple(chosen))

    def inputs(self, plan: RunPlan) -> LayerInputs:
        fp = plan.fingerprints
        settings = json_fingerprint({"interventions": asdict(self.settings(plan.job)), "seed": plan.job.seed})
        return {info.name: {"layer": fp["layers"][info.name], "concepts": fp.get("concepts", ""), "settings": settings}
                for info in self.part(plan).layers}

    def run(self, ctx: Context[InterventionsSettings, InterventionsPart, list], driver: Driver) -> list[Outcome]:
        broden = DissectionStage().part(ctx.plan).broden
        dissection = ctx.result_of(DissectionStage).layers
        with driver.timed("interventions: reading the masks"):
            pixels, area = concept_pixels(broden)
        names = [record.path for record in ctx.plan.images.records]
        numbers = {label.name: number for number, label in broden.labels.items()}
        tasks = [task for info in ctx.part.layers
                 for task in tasks_of_layer(info, dissection[info.name], names, pixels, area, numbers, ctx.settings,
                                            ctx.plan.job.seed)]
        if not tasks:
            return []
        return driver.map(intervene, tasks, driver.share(ctx.part.segmenter.recipe), len(ctx.part.segmenter.labels))

    def write(self, draft: Draft, ctx: Context[InterventionsSettings, InterventionsPart, list],
              result: list[Outcome]) -> ManifestPart:
        return write_interventions(draft, ctx.settings, ctx.part.layers, result)
