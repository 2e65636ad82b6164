"""The sparse dictionary (TopK SAE) and its quality measures, against ground truth built here: vectors in
superposition (more one-concept directions than channels, two at most active at once), known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.stages.dictionary.quality import QualityPartial, matched_cosine, measure, summary
from pipeline.stages.dictionary.sae import TrainSettings, top_k, train

CHANNELS, PLANTED = 8, 16


def _directions(seed: int = 1) -> torch.Tensor:
    d = torch.randn(PLANTED, CHANNELS, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=1, keepdim=True)


def _superposed(directions: torch.Tensor, batches: int, size: int = 1024, seed: int = 2):
    """Each vector: one planted direction at magnitude 1-2, and half the time a second one."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        which = torch.randint(0, PLANTED, (size, 2), generator=gen)
        magnitude = (1 + torch.rand(size, 2, generator=gen)) * (torch.rand(size, 2, generator=gen) < torch.tensor([1.0, 0.5]))
        yield (magnitude[:, :, None] * directions[which]).sum(dim=1)


@pytest.fixture(scope="module")
def planted():
    directions = _directions()
    settings = TrainSettings(features=32, k=2, steps=3000, lr=3e-3, seed=0)
    return directions, train(_superposed(directions, 3000), settings), settings


def test_every_planted_direction_is_recovered_as_one_feature(planted):
    """16 directions in 8 channels: every one has a decoder row within 0.95 cosine; a vector made of one direction
    alone fires most a feature of its own (sixteen different ones) whose decoder is that direction."""
    directions, dictionary, _ = planted
    cos = torch.as_tensor(dictionary.decoder) @ directions.T  # [features, planted]
    assert (cos.max(dim=0).values > 0.95).all(), cos.max(dim=0).values
    first = dictionary.tensors().encode(1.5 * directions).argmax(dim=1)  # the feature each direction fires most
    assert len(set(first.tolist())) == PLANTED
    assert (cos[first, torch.arange(PLANTED)] > 0.9).all(), cos[first, torch.arange(PLANTED)]


def test_the_dictionary_reconstructs_and_stays_sparse(planted):
    directions, dictionary, settings = planted
    stats = summary(measure(dictionary, _superposed(directions, 4, seed=7)))
    assert stats["explained_variance"] > 0.9 and 1.0 <= stats["mean_l0"] <= settings.k
    assert np.allclose(np.linalg.norm(dictionary.decoder, axis=1), 1.0, atol=1e-5)  # unit-norm decoder rows


def test_the_same_seed_gives_the_same_dictionary_and_another_seed_a_matching_one(planted):
    directions, dictionary, settings = planted
    again = train(_superposed(directions, 50), TrainSettings(32, 2, 50, 3e-3, seed=0))
    same = train(_superposed(directions, 50), TrainSettings(32, 2, 50, 3e-3, seed=0))
    assert all(np.array_equal(getattr(again, f), getattr(same, f)) for f in ("encoder", "decoder", "decoder_bias"))
    other = train(_superposed(directions, 1500, size=512), TrainSettings(32, 2, 1500, 3e-3, seed=1))
    assert not np.array_equal(other.decoder, dictionary.decoder)
    matched = matched_cosine(dictionary.decoder, other.decoder)
    assert (np.sort(matched)[-PLANTED:] > 0.95).all()  # the planted features, found by both seeds


def test_matched_cosine_pairs_a_permuted_dictionary_exactly():
    a = np.random.default_rng(0).normal(size=(6, 4))
    order = np.array([3, 0, 5, 1, 4, 2])
    assert np.allclose(matched_cosine(a, 2 * a[order]), 1.0)


def test_quality_summary_by_hand():
    """Four vectors (x = 1, 3, 1, 3 on one channel: mean 2, squared deviations 4 in all), squared error 0.5 in all:
    explained variance 1 - 0.5 / 4; feature 0 fired on all four (dense), feature 1 on one, feature 2 never (dead)."""
    q = QualityPartial(4, np.array([4, 1, 0]), 5, 0.5, np.array([8.0]), 1 + 9 + 1 + 9)
    stats = summary(q)
    assert stats["explained_variance"] == pytest.approx(0.875)
    assert stats["mean_l0"] == 1.25 and stats["dead_fraction"] == pytest.approx(1 / 3)
    assert stats["dense_fraction"] == pytest.approx(2 / 3)  # 1.0 and 0.25 are above 0.1
    assert sum(stats["firing_histogram"]) == 2 and stats["firing_histogram"][-1] == 2  # both in the top bin


def test_top_k_keeps_the_k_largest():
    values = torch.tensor([[0.1, 3.0, 2.0, 0.0], [5.0, 0.0, 1.0, 4.0]])
    assert torch.equal(top_k(values, 2), torch.tensor([[0.0, 3.0, 2.0, 0.0], [5.0, 0.0, 0.0, 4.0]]))


# --- the stage, through the command line on a real local Ray ---------------------------------------------------------

DICTIONARY = {"layers": ["conv2"], "steps": 100, "batch": 256, "buffer": 2048, "eval_images": 4}


def _job(folder, workers: int = 1, dictionary: dict | None = None):
    """The planted model's conv1 and conv2 on 12 images, [stages.dictionary] over conv2 (`dictionary`: other keys)."""
    from conftest import job_toml, make_images, write_job

    if not (folder / "images").exists():
        make_images(folder / "images", count=12, size=32)
    section = "".join(f"{key} = {json.dumps(value)}\n" for key, value in {**DICTIONARY, **(dictionary or {})}.items())
    return write_job(folder, job_toml("planted", ["conv1", "conv2"], k=2, patch=8, workers=workers, shard=4,
                                      activations={"spectrum_quantiles": 0}) + "\n[stages.dictionary]\n" + section)


@pytest.mark.usefixtures("ray_local")
def test_the_stage_writes_each_dictionary_its_quality_and_describe_shows_it(tmp_path, capsys):
    from catalog_schema import Catalog
    from pipeline.cli import main

    assert main(["run", str(_job(tmp_path))]) == 0
    catalog = Catalog.open(tmp_path / "catalog")
    (row,) = catalog.dictionary_quality().to_dict("records")
    assert (row["layer"], row["features"], row["k"], row["channels"]) == ("conv2", 8 * 6, 1, 6)
    _, h, w = next(layer["shape"] for layer in catalog.manifest["layers"] if layer["name"] == "conv2")
    assert row["eval_vectors"] == 4 * h * w  # every position of the 4 evaluation images
    assert 0 < row["explained_variance"] <= 1 and row["mean_l0"] <= 1
    assert 0 < row["stability"] <= 1
    d = catalog.dictionary("conv2")
    assert d["decoder"].shape == (48, 6) and np.allclose(np.linalg.norm(d["decoder"], axis=1), 1, atol=1e-5)
    histogram = catalog.manifest["dictionary"]["layers"]["conv2"]["firing_histogram"]
    assert sum(histogram) == round(48 * (1 - row["dead_fraction"]))
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "catalog")]) == 0
    out = capsys.readouterr().out
    assert "dictionaries (sparse, TopK" in out and "conv2" in out.split("dictionaries")[1]
    assert row["accuracy"] is not None and row["accuracy_reconstructed"] is not None  # class folders: labelled
    assert main(["render", str(tmp_path / "catalog"), "--out", str(tmp_path / "site")]) == 0
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Sparse dictionaries" in index and f"<td>conv2</td><td>48</td><td>1</td><td>{row['explained_variance']:.3f}</td>" in index


@pytest.mark.usefixtures("ray_local")
def test_the_same_dictionary_whatever_the_number_of_workers(tmp_path):
    from catalog_schema import Catalog
    from pipeline.cli import main

    assert main(["run", str(_job(tmp_path / "one", workers=1))]) == 0
    assert main(["run", str(_job(tmp_path / "two", workers=2))]) == 0
    one, two = (Catalog.open(tmp_path / name / "catalog") for name in ("one", "two"))
    for key in ("encoder", "decoder", "encoder_bias", "decoder_bias"):
        assert np.array_equal(one.dictionary("conv2")[key], two.dictionary("conv2")[key]), key
    assert one.dictionary_quality().equals(two.dictionary_quality())
    assert one.units().equals(two.units()) and one.examples("conv2..features").equals(two.examples("conv2..features"))


@pytest.mark.parametrize("keys,message", [
    ({"layers": []}, "job key 'stages.dictionary.layers' is empty"),
    ({"layers": ["fc"]}, "stages.dictionary.layers selects fc, which model.layers does not"),
    ({"buffer": 8}, "job key 'stages.dictionary.buffer' (8) must hold at least one batch"),
], ids=["no layers", "outside model.layers", "buffer"])
def test_bad_dictionary_settings_are_refused_with_the_key(tmp_path, capsys, keys, message):
    from pipeline.cli import main

    assert main(["run", str(_job(tmp_path, dictionary=keys))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_loss_recovered_by_hand():
    """A perfect reconstruction recovers all of the loss (1), the mean vector none (0); on a token layer only the
    patch grid is replaced: with every patch vector zeroed, the planted token model's logits are head(class
    token) = (1, -1) whatever the image."""
    import sys
    from pathlib import Path

    from pipeline.inputs.batches import Batch
    from pipeline.inputs.model_survey import survey_model
    from pipeline.stages.dictionary.recovery import scores

    sys.path.insert(0, str(Path(__file__).parent / "assets"))
    from tiny_models import planted_tokens

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    (info,) = survey_model(model, ["1"], (3, 8, 8)).layers
    batch = Batch(np.zeros(0), torch.randn(6, 3, 8, 8), np.arange(6))
    labels = {i: i % 3 for i in range(6)}
    mean = torch.ones(4)
    perfect = scores(model, info, [batch], labels, lambda v: v, mean).summary()
    assert perfect["loss_recovered"] == pytest.approx(1.0) and perfect["accuracy"] == perfect["accuracy_reconstructed"]
    assert scores(model, info, [batch], labels, lambda v: mean.expand_as(v), mean).summary()["loss_recovered"] == 0.0

    tokens = planted_tokens().eval()
    (info,) = survey_model(tokens, ["relu"], (3, 32, 32)).layers
    batch = Batch(np.zeros(0), torch.randn(4, 3, 32, 32), np.arange(4))
    zeroed = scores(tokens, info, [batch], {i: 0 for i in range(4)}, torch.zeros_like, torch.zeros(4))
    assert zeroed.loss[1] == pytest.approx(4 * (np.log(np.e + 1 / np.e) - 1), abs=1e-5)  # -log softmax(1, -1)[0]
    assert zeroed.correct[1] == 4


def test_a_data_set_that_fits_the_buffer_is_read_through_the_model_once():
    """`epochs` keeps the first epoch's vectors when they fit in the buffer, and reads every epoch anew otherwise."""
    from itertools import islice

    from pipeline.stages.dictionary.vectors import epochs

    reads = []

    def read(epoch):
        reads.append(epoch)
        yield from (torch.full((10, 2), float(epoch * 3 + i)) for i in range(3))

    small = list(islice(epochs(read, buffer=30), 6))
    assert reads == [0] and [float(v[0, 0]) for v in small[:3]] == [0, 1, 2]
    assert torch.equal(small[3], torch.cat(small[:3])) and torch.equal(small[5], small[3])
    reads.clear()
    large = list(islice(epochs(read, buffer=29), 7))
    assert reads == [0, 1, 2] and [float(v[0, 0]) for v in large] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.usefixtures("ray_local")
def test_a_run_of_the_dictionary_stage_alone_catalogs_the_layer_and_its_features(tmp_path):
    """--stages dictionary: the activations stage runs too (the units table comes from it)."""
    from catalog_schema import Catalog
    from pipeline.cli import main

    assert main(["run", str(_job(tmp_path, dictionary={"stability": False})), "--stages", "dictionary"]) == 0
    catalog = Catalog.open(tmp_path / "catalog")
    assert catalog.manifest["stages_done"] == ["dictionary", "activations"]
    assert catalog.layers == ["conv1", "conv2", "conv2..features"]
    assert (catalog.units()["layer"] == "conv2..features").sum() == 48


@pytest.mark.usefixtures("ray_local")
def test_a_re_analysis_reuses_an_unchanged_dictionary_and_its_features(tmp_path):
    """--previous with the same model, data and settings: the dictionary is read back, not trained again, and the
    stages after it reuse its features' results; a changed setting trains it anew."""
    from catalog_schema import Catalog
    from pipeline.cli import main

    job = _job(tmp_path)
    assert main(["run", str(job)]) == 0
    assert main(["run", str(job), "--out", str(tmp_path / "again"), "--previous", str(tmp_path / "catalog")]) == 0
    first, again = Catalog.open(tmp_path / "catalog"), Catalog.open(tmp_path / "again")
    record = again.manifest["reuse"]["stages"]
    assert record["dictionary"]["conv2"]["action"] == "reused"
    assert record["activations"]["conv2..features"]["action"] == "reused"
    for key in ("encoder", "decoder", "encoder_bias", "decoder_bias"):
        assert np.array_equal(first.dictionary("conv2")[key], again.dictionary("conv2")[key]), key
    assert first.dictionary_quality().equals(again.dictionary_quality())
    assert first.manifest["dictionary"]["layers"] == again.manifest["dictionary"]["layers"]
    assert first.units().equals(again.units())
    assert main(["run", str(_job(tmp_path, dictionary={"steps": 90})), "--out", str(tmp_path / "tuned"),
                 "--previous", str(tmp_path / "catalog")]) == 0
    tuned = Catalog.open(tmp_path / "tuned").manifest["reuse"]["stages"]
    assert tuned["dictionary"]["conv2"] == {"action": "computed", "why": "the stage's settings changed"}
    assert tuned["activations"]["conv2..features"]["action"] == "computed"


@pytest.mark.parametrize("players", [None, ["conv2..features"]], ids=["every layer", "the features"])
def test_shapley_over_features_is_computed_again_when_their_dictionary_changes(tmp_path, players):
    """Shapley's result is the model's as a whole: a feature player's dictionary is one of its inputs."""
    from pipeline.job.load import load_job
    from pipeline.planning import make_plan
    from pipeline.registry import STAGES, selected_stages
    from pipeline.stages.shapley.stage import ShapleyStage

    def inputs(steps: int) -> dict:
        text = _job(tmp_path, dictionary={"steps": steps}).read_text()
        shapley = "\n[stages.shapley]\n" + (f"layers = {json.dumps(players)}\n" if players else "")
        (tmp_path / "job.toml").write_text(text + shapley)
        job = load_job(tmp_path / "job.toml", STAGES)
        return ShapleyStage().inputs(make_plan(job, selected_stages(job.stages.requested())))["*"]

    before, after = inputs(100), inputs(90)
    assert before["model"] == after["model"] and before["features"] != after["features"]
