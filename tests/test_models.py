"""Model sources, weights and layer selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.job.config import ModelConfig
from pipeline.job.load import load_job
from pipeline.registry import STAGES
from pipeline.errors import UserError
from pipeline.inputs.fingerprints import model_fingerprint
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import build_model, recipe_from_config, resolve_layers

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_job_files_validate(job):
    cfg = load_job(job, STAGES)
    assert cfg.output.catalog is not None and (cfg.data.images is None) == (cfg.latents is not None)  # a generator: no [data]


def test_torchvision_with_a_local_state_dict(tmp_path):
    source = torchvision.models.resnet18(num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    cfg = ModelConfig(torchvision="resnet18", weights=tmp_path / "w.pth", num_classes=5)
    model = build_model(recipe_from_config(cfg))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), source.eval()(x))
    with pytest.raises(UserError, match="num_classes"):
        build_model(recipe_from_config(ModelConfig(torchvision="resnet18", weights=tmp_path / "w.pth")))


def test_layers_by_path_glob_and_default():
    model = torchvision.models.resnet18()
    assert resolve_layers(model, ("layer1.*.conv1", "fc")) == ["layer1.0.conv1", "layer1.1.conv1", "fc"]
    default = resolve_layers(model, ())
    assert len(default) == 21 and default[0] == "conv1" and default[-1] == "fc"
    with pytest.raises(UserError, match="layer1.0.conv1"):
        resolve_layers(model, ("layer1.0.cnv1",))


def test_a_module_called_twice_is_read_on_its_last_call():
    model = torchvision.models.resnet18().eval()
    infos = survey_model(model, ["layer1.0.relu", "layer1.0"], (3, 32, 32)).layers
    assert infos[0].calls == 2 and infos[1].calls == 1
    seen = {}
    with tapped(model, infos, lambda name, out: seen.__setitem__(name, out.clone())) as run:
        with torch.inference_mode():
            run(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(seen["layer1.0.relu"], seen["layer1.0"])  # the block's output is its relu's 2nd call


def test_torchscript_files_are_refused_with_a_reason(tmp_path):
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)))
    torch.jit.save(scripted, tmp_path / "m.pt")
    model = build_model(recipe_from_config(ModelConfig(archive=tmp_path / "m.pt")))
    with pytest.raises(UserError, match="do not support forward hooks"):
        survey_model(model, ["0"], (3, 8, 8)).layers


def test_a_layer_without_channel_output_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(0))
    with pytest.raises(UserError, match="which axis holds its channels"):
        survey_model(model, ["1"], (3, 8, 8)).layers


def test_torch_export_archives_are_read_layer_by_layer(tmp_path):
    source = torchvision.models.resnet18(num_classes=4).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(source, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "r18.pt2")
    model = build_model(recipe_from_config(ModelConfig(archive=tmp_path / "r18.pt2")))
    infos = survey_model(model, resolve_layers(model, ("layer2", "fc")), (3, 32, 32)).layers
    assert [(i.name, i.shape) for i in infos] == [("layer2", (128, 4, 4)), ("fc", (4,))]
    x = torch.randn(3, 3, 32, 32)
    seen = {}
    with tapped(model, infos, lambda name, out: seen.__setitem__(name, out.clone())) as run:
        with torch.inference_mode():
            run(x)
            expected = source(x)
    torch.testing.assert_close(seen["fc"][:, :, 0, 0], expected)


def test_fingerprints_cover_zero_dim_buffers():
    model = torchvision.models.resnet18(num_classes=3).eval()  # BatchNorm's num_batches_tracked is a 0-dim tensor
    before = model_fingerprint(model)
    layers = survey_model(model, ["layer1", "fc"], (3, 32, 32)).fingerprints
    model.layer4[1].bn2.num_batches_tracked += 1
    assert model_fingerprint(model) != before
    after = survey_model(model, ["layer1", "fc"], (3, 32, 32)).fingerprints
    assert after["layer1"] == layers["layer1"] and after["fc"] != layers["fc"]


def test_the_old_key_torchscript_names_the_same_archive(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"")
    (tmp_path / "images").mkdir()
    base = '[data]\nimages = "images"\n[output]\ncatalog = "out"\n'
    job = tmp_path / "job.toml"
    job.write_text('[model]\ntorchscript = "m.pt2"\n' + base)
    assert load_job(job, STAGES).model.archive == tmp_path / "m.pt2"
    job.write_text('[model]\ntorchscript = "m.pt2"\narchive = "m.pt2"\n' + base)
    with pytest.raises(UserError, match="both archive and torchscript"):
        load_job(job, STAGES)
