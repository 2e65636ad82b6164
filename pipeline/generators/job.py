"""A generator job's inputs: the generated sample stands in for [data] images and, with a segmenter, for
[concepts] broden, so that the stages read a generator's images and concepts as they read a classifier's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from pipeline.generators.latents import LATENTS_FILE
from pipeline.generators.sample import Sample, make_sample, sample_folder
from pipeline.generators.segmenter import segmenter_spec
from pipeline.job.config import JobConfig
from pipeline.job.load import check_output_location


def generated_inputs(job: JobConfig, model: nn.Module, catalog: Path) -> tuple[JobConfig, Sample]:
    """The job with the sample as its data (and concepts), and the sample, made or reused."""
    folder = sample_folder(job, catalog).resolve()
    segmenter = segmenter_spec(job) if job.concepts.segmenter else None
    as_read = replace(job, data=replace(job.data, images=folder / "sample", limit=0),
                      concepts=replace(job.concepts, broden=folder if segmenter else None))
    check_output_location(as_read, catalog)  # before anything is written
    sample = make_sample(job, model, folder, segmenter)
    return as_read, sample


def latents_file(sample: Sample) -> str:
    return str(sample.root / LATENTS_FILE)
