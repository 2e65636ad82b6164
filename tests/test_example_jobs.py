"""The example jobs beside the demo (jobs/*.toml) are valid, and the layers they pick are read as the comments say:
checked on the real architectures, built with random weights (the jobs' weight files are the user's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import ModelRecipe, build_model, resolve_layers
from pipeline.job.load import load_job
from pipeline.registry import STAGES

JOBS = Path(__file__).parent.parent / "jobs"

# job file -> (layers, units, layout, prefix tokens) of what its [model] layers select
EXPECTED = {"resnet18.toml": (4, 960, "nchw", 0), "vit_b_16.toml": (24, 46_080, "tokens", 1),
            "timm_vit.toml": (24, 23_040, "tokens", 1)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_example_job_selects_the_units_it_says(name, monkeypatch):
    if name.startswith("timm"):
        pytest.importorskip("timm", reason="the timm extra: make test installs it")
    for fn in [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]:
        monkeypatch.setattr(torch.nn.init, fn, lambda tensor, *args, **kwargs: tensor)  # shapes need no values
    job = load_job(JOBS / name, STAGES)
    m = job.model
    kind, arch = ("timm", m.timm) if m.timm else ("torchvision", m.torchvision)
    model = build_model(ModelRecipe(kind, arch, m.num_classes or 1000)).eval()
    survey = survey_model(model, resolve_layers(model, m.layers), (len(m.mean), m.input_size, m.input_size))
    layers, units, layout, prefix = EXPECTED[name]
    assert (len(survey.layers), sum(info.units for info in survey.layers)) == (layers, units)
    assert {(info.layout, info.prefix) for info in survey.layers} == {(layout, prefix)}
    for stage in ("featvis", "shapley"):  # their layers (empty: all of model.layers) are among model.layers
        chosen = job.stages.sections[stage].layers
        assert not chosen or set(resolve_layers(model, chosen)) <= {info.name for info in survey.layers}
