"""Re-analysis through the command line: results whose inputs did not change are reused from the previous
catalog, everything downstream of a changed layer is recomputed, and the outcome equals a fresh run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from catalog_schema import ARRAYS, Catalog
from conftest import ASSETS, PLANTED_LAYERS, job_toml, make_images, write_job
from mini_broden import write_mini_broden
from pipeline.cli import main

sys.path.insert(0, str(ASSETS))
from tiny_models import planted  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_local")

def reanalysis_toml(weights: str, catalog: str, previous: str | None = None, history: bool | None = None, quantile: float = 0.2) -> str:
    """The planted model with `weights`, every stage (Shapley's players: conv2)."""
    return job_toml("planted", PLANTED_LAYERS, weights=weights, broden="broden", k=3, patch=8, activations={"probe_images": 16},
                    featvis={"steps": 6, "size": 16}, dissection={"quantile": quantile},
                    shapley={"layers": ["conv2"], "eval_images": 12, "top_k": 2, "rounds": 2, "permutations_per_round": 3},
                    shard=8, catalog=catalog, top={"previous": previous}, output={"history": history})


STAGES = ("activations", "featvis", "dissection", "shapley")
DEAD = ("conv2", 5)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reanalysis")
    make_images(folder / "images", count=24)
    write_mini_broden(folder / "broden", images=8)
    model = planted()
    with torch.no_grad():  # a dead unit, as after a ReLU: constant, so no concept, no featvis ratio (nulls)
        model.conv2.weight[DEAD[1]].zero_()
        model.conv2.bias[DEAD[1]] = 0.0
    torch.save(model.state_dict(), folder / "original.pt")
    tuned = model.state_dict()
    tuned["fc.weight"] = tuned["fc.weight"] + 0.5 * torch.randn(tuned["fc.weight"].shape, generator=torch.Generator().manual_seed(1))
    torch.save(tuned, folder / "tuned_fc.pt")
    middle = dict(tuned)
    middle["conv2.weight"] = middle["conv2.weight"].flip(0)  # conv2's units permuted: a change in the middle
    torch.save(middle, folder / "changed_conv2.pt")
    return folder


def run(world: Path, weights: str, catalog: str, previous: str | None = None, history: bool | None = None, argv: tuple = ()) -> Catalog:
    job = write_job(world, reanalysis_toml(weights, catalog, previous, history))
    assert main(["run", str(job), *argv]) == 0
    return Catalog.open(world / catalog)


def actions(cat: Catalog, action: str) -> dict[str, set[str]]:
    return {stage: {layer for layer, r in layers.items() if r["action"] == action}
            for stage, layers in cat.manifest["reuse"]["stages"].items()}


@pytest.fixture(scope="module")
def runs(world) -> dict[str, Catalog]:
    first = run(world, "original.pt", "first")
    tuned = run(world, "tuned_fc.pt", "tuned", previous="first")
    fresh = run(world, "tuned_fc.pt", "fresh")
    middle = run(world, "changed_conv2.pt", "middle", argv=("--previous", str(world / "tuned")))
    return {"first": first, "tuned": tuned, "fresh": fresh, "middle": middle}


def test_first_run_computes_everything_and_records_why(runs):
    reuse = runs["first"].manifest["reuse"]
    assert reuse["previous"] is None
    assert actions(runs["first"], "reused") == {stage: set() for stage in STAGES}
    assert {r["why"] for layers in reuse["stages"].values() for r in layers.values()} == {"no previous catalog"}


def test_fine_tuned_last_layer_recomputes_only_what_depends_on_it(runs):
    tuned = runs["tuned"]
    assert tuned.manifest["reuse"]["previous_run_id"] == runs["first"].manifest["run_id"]
    assert actions(tuned, "computed") == {"activations": {"fc"}, "featvis": {"fc"}, "dissection": {"fc"}, "shapley": {"*"}}
    assert actions(tuned, "reused") == {"activations": {"conv1", "conv2"}, "featvis": {"conv1", "conv2"},
                                        "dissection": {"conv1", "conv2"}, "shapley": set()}
    why = tuned.manifest["reuse"]["stages"]
    assert "weights" in why["activations"]["fc"]["why"] and why["shapley"]["*"]["why"] == "the model changed"
    from pipeline.catalog.describe import describe
    assert "computed: activations fc, dissection fc, featvis fc, shapley" in describe(tuned)


def _frames(cat: Catalog) -> dict[str, pd.DataFrame]:
    return {name: cat.table(name) for name in ("units", "examples", "spectrum", "dissection", "shapley", "shapley_ablation", "images")}


def test_reused_catalog_equals_a_fresh_run_of_the_new_model(runs):
    """Reuse is an optimization only: every table and array is what a run from scratch writes, nulls included."""
    tuned, fresh = runs["tuned"], runs["fresh"]
    dead = tuned.units().set_index(["layer", "unit"]).loc[DEAD]
    assert dead["dead"] and dead[["label", "category", "featvis_ratio"]].isna().all()  # the reused layer holds nulls
    for name, frame in _frames(tuned).items():
        pd.testing.assert_frame_equal(frame, _frames(fresh)[name], obj=name)
        a, b = tuned.arrow(name), fresh.arrow(name)
        for column in a.column_names:  # pandas reads a null and a NaN alike: compare where the nulls are
            assert a.column(column).is_null().equals(b.column(column).is_null()), (name, column)
    for group in ARRAYS:
        for layer in tuned.layers:
            assert tuned.has_array(group, layer) == fresh.has_array(group, layer), (group, layer)
            if tuned.has_array(group, layer):
                a = tuned._array(ARRAYS[group], layer)
                b = fresh._array(ARRAYS[group], layer)
                np.testing.assert_array_equal(a[...], b[...], err_msg=f"{group}/{layer}")
    assert tuned.manifest["shapley"] == fresh.manifest["shapley"]


def test_earlier_layers_come_out_identical_and_the_changed_layer_differs(runs):
    first, tuned = runs["first"].units().set_index(["layer", "unit"]), runs["tuned"].units().set_index(["layer", "unit"])
    for layer in ("conv1", "conv2"):
        pd.testing.assert_frame_equal(first.loc[layer].drop(columns=["shapley", "shapley_ci_low", "shapley_ci_high"]),
                                      tuned.loc[layer].drop(columns=["shapley", "shapley_ci_low", "shapley_ci_high"]))
        np.testing.assert_array_equal(runs["first"].featvis(layer, None), runs["tuned"].featvis(layer, None))
    assert not np.allclose(first.loc["fc"]["act_mean"], tuned.loc["fc"]["act_mean"])


def test_changing_a_middle_layer_recomputes_it_and_every_later_layer(runs):
    middle = runs["middle"]
    assert actions(middle, "computed") == {"activations": {"conv2", "fc"}, "featvis": {"conv2", "fc"},
                                           "dissection": {"conv2", "fc"}, "shapley": {"*"}}
    assert actions(middle, "reused")["activations"] == {"conv1"}


def test_changed_settings_recompute_only_their_stage(world, runs):
    job = write_job(world, reanalysis_toml("tuned_fc.pt", "settings", previous="tuned", quantile=0.25))
    assert main(["run", str(job)]) == 0
    cat = Catalog.open(world / "settings")
    assert actions(cat, "computed") == {"activations": set(), "featvis": set(), "shapley": set(),
                                        "dissection": {"conv1", "conv2", "fc"}}
    assert {r["why"] for r in cat.manifest["reuse"]["stages"]["dissection"].values()} == {"the stage's settings changed"}
    pd.testing.assert_frame_equal(cat.shapley(), runs["tuned"].shapley())


def test_history_with_latest(world):
    first = run(world, "original.pt", "hist", previous="latest", history=True)
    assert actions(first, "reused") == {stage: set() for stage in STAGES}  # nothing to reuse yet
    root = world / "hist"
    assert os.path.islink(root / "latest") and (root / "latest").resolve() == first.path
    second = run(world, "original.pt", "hist", previous="latest", history=True)
    assert second.path != first.path and second.path.parent == root
    assert actions(second, "computed") == {stage: set() for stage in STAGES}
    assert second.manifest["reuse"]["previous"] == str(first.path)
    assert (root / "latest").resolve() == second.path
    pd.testing.assert_frame_equal(first.units(), second.units())
    assert json.loads((first.path / "manifest.json").read_text())["run_id"] == first.manifest["run_id"]  # untouched


def test_previous_that_is_not_a_catalog_exits_2(world, capsys):
    job = write_job(world, reanalysis_toml("original.pt", "bad", previous="nowhere"))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "job key 'previous'" in err and "nowhere" in err and "Traceback" not in err
    assert main(["run", str(job), "--previous", str(world / "images")]) == 2
    assert "--previous" in capsys.readouterr().err


def test_a_catalog_whose_fingerprints_were_made_another_way_is_computed_again_saying_so(world, runs):
    """A catalog of an older neuron-catalog (no fingerprint `scheme`): its hashes cannot be compared, so nothing is
    reused, and the manifest says why instead of blaming the weights."""
    import shutil

    old = world / "old-scheme"
    shutil.copytree(runs["first"].path, old, symlinks=True)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["fingerprints"]["scheme"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    again = run(world, "original.pt", "after-old-scheme", previous="old-scheme")
    assert actions(again, "reused") == {stage: set() for stage in STAGES}
    whys = {r["why"] for layers in again.manifest["reuse"]["stages"].values() for r in layers.values()}
    assert whys == {"the previous catalog's fingerprints were made by an older neuron-catalog, in another way"}
