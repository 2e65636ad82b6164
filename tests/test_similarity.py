"""The similarity stage: every unit's nearest units, against brute force and planted twins.

tests/assets/tiny_models.py:twins plants units with known neighbours: conv1 units 1 and 4 are copies
(correlation 1, weight cosine 1), conv1 unit 5 is constant (no neighbours), conv2 unit 0 is an affine
copy of relu1 unit 2 (correlation 1 across layers), conv2 unit 4 is 3 x unit 3.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from catalog_schema import Catalog
from conftest import job_toml, make_images, run_cli, write_job
from pipeline.cli import main
from pipeline.stages.similarity import neighbours as nb

LAYERS = ["conv1", "relu1", "conv2"]


def _brute_force(a: np.ndarray, b: np.ndarray, k: int, same: bool, cosine: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every pair scored with numpy's own corrcoef (or cosine), then sorted by (-score to 12 decimals, index)."""
    if cosine:
        na, nbm = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        full = (a @ b.T) / np.outer(na, nbm)
    else:
        full = np.corrcoef(a, b)[: len(a), len(a):]
    index, score = np.full((len(a), k), -1), np.full((len(a), k), np.nan)
    for i in range(len(a)):
        if not np.isfinite(full[i]).any():
            continue
        cands = [j for j in range(len(b)) if np.isfinite(full[i, j]) and not (same and i == j)]
        cands.sort(key=lambda j: (-round(full[i, j], 12), j))
        index[i, : len(cands[:k])] = cands[:k]
        score[i, : len(cands[:k])] = full[i, cands[:k]]
    return index, score


@pytest.mark.parametrize("block", [7, 1 << 25])
def test_nearest_is_exact_in_blocks(block, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 12))
    a[5] = a[17] * 2 + 1  # a perfect twin
    a[9] = 3.0  # constant: no correlation with anything
    a[30] = a[31]  # a tie for the units that prefer them
    b = rng.normal(size=(45, 12))
    monkeypatch.setattr(nb, "BLOCK_SCORES", block * 45)
    with np.errstate(invalid="ignore", divide="ignore"):
        for queries, cands, same in ((a, a, True), (a, b, False)):
            want_i, want_s = _brute_force(queries, cands, 5, same)
            got_i, got_s = nb.nearest(nb.correlation_rows(queries), nb.correlation_rows(cands), 5, same=same)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_s, want_s, atol=1e-12)
    got_i, got_s = nb.nearest(nb.correlation_rows(a), nb.correlation_rows(a), 5, same=True)
    assert got_i[5, 0] == 17 and got_i[17, 0] == 5 and got_s[5, 0] == pytest.approx(1.0, abs=1e-12)
    assert (got_i[9] == -1).all() and 9 not in got_i
    w = rng.normal(size=(20, 3, 3, 3))
    w[4] = 0.0
    got_i, got_s = nb.nearest(nb.cosine_rows(w), nb.cosine_rows(w), 3, same=True)
    flat = w.reshape(20, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        want_i, want_s = _brute_force(flat, flat, 3, True, cosine=True)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-12)


def test_fewer_candidates_than_k_are_padded():
    rows = nb.correlation_rows(np.random.default_rng(1).normal(size=(3, 8)))
    index, score = nb.nearest(rows, rows, 5, same=True)
    assert (index[:, :2] >= 0).all() and (index[:, 2:] == -1).all() and np.isnan(score[:, 2:]).all()


def _twins(folder, workers: int = 1, **similarity):
    make_images(folder / "images", count=24)
    return write_job(folder, job_toml("twins", LAYERS, activations={"probe_images": 24}, workers=workers, shard=8,
                                      similarity={"neighbours": 3, **similarity}))


@pytest.fixture(scope="module")
def twins(tmp_path_factory, ray_local) -> Catalog:
    return Catalog.open(run_cli(_twins(tmp_path_factory.mktemp("twins"))).catalog)


def _near(cat: Catalog, layer: str, unit: int, other: str, kind: str = "activation") -> pd.DataFrame:
    rows = cat.similar(layer, unit)
    return rows[(rows["other_layer"] == other) & (rows["kind"] == kind)].sort_values("rank")


def test_planted_twins_are_each_others_nearest(twins):
    for layer, a, b in (("conv1", 1, 4), ("conv2", 3, 4)):
        for kind in ("activation", "weight"):
            for u, v in ((a, b), (b, a)):
                first = _near(twins, layer, u, layer, kind).iloc[0]
                assert (first["other_unit"], first["rank"]) == (v, 0)
                assert first["score"] == pytest.approx(1.0, abs=1e-6)
    across = _near(twins, "relu1", 2, "conv2").iloc[0]
    assert across["other_unit"] == 0 and across["score"] == pytest.approx(1.0, abs=1e-6)
    back = _near(twins, "conv2", 0, "relu1").iloc[0]
    assert back["other_unit"] == 2 and back["score"] == pytest.approx(1.0, abs=1e-6)


def test_constant_units_have_no_neighbours_and_are_none(twins):
    table = twins.similar()
    assert not ((table["layer"] == "conv1") & (table["unit"] == 5)).any()
    assert not ((table["other_layer"] == "conv1") & (table["other_unit"] == 5)).any()
    assert twins.manifest["similarity"]["layers"]["conv1"] == {"activation_without_neighbours": 1,
                                                              "weight_without_neighbours": 1}
    assert set(table[table["layer"] == "relu1"]["kind"]) == {"activation"}  # a ReLU has no weights of its own


def test_every_neighbour_list_matches_brute_force_on_the_stored_probes(twins):
    table = twins.similar()
    for layer in LAYERS:
        for j in (i for i in range(len(LAYERS)) if abs(i - LAYERS.index(layer)) <= 1):
            other = LAYERS[j]
            a, b = twins.probes(layer)[0].astype(np.float64), twins.probes(other)[0].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                want_i, want_s = _brute_force(a, b, 3, same=layer == other)
            for u in range(len(a)):
                got = table[(table["layer"] == layer) & (table["unit"] == u) & (table["other_layer"] == other)
                            & (table["kind"] == "activation")].sort_values("rank")
                keep = want_i[u] >= 0
                assert got["other_unit"].tolist() == want_i[u][keep].tolist(), (layer, u, other)
                np.testing.assert_allclose(got["score"], want_s[u][keep], atol=1e-5)
                assert got["rank"].tolist() == list(range(int(keep.sum())))


def test_same_neighbours_with_two_workers(twins, tmp_path, ray_local):
    """The same neighbours and scores, to the bit: both actors run torch on the job's cpus_per_worker threads, so
    the probes are the same as one actor's (a near-constant unit's correlation would magnify an ulp)."""
    other = Catalog.open(run_cli(_twins(tmp_path, workers=2)).catalog)
    pd.testing.assert_frame_equal(other.similar(), twins.similar(), check_exact=True)
    for layer in LAYERS:
        for mine, theirs in zip(other.probes(layer), twins.probes(layer)):
            np.testing.assert_array_equal(mine, theirs)


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_query_similar_to(twins):
    code, out, _ = _cli("query", str(twins.path), "--similar-to", "conv1:1", "--format", "csv")
    assert code == 0
    rows = pd.read_csv(io.StringIO(out))
    first = rows[(rows["other_layer"] == "conv1") & (rows["kind"] == "weight")].iloc[0]
    assert first["other_unit"] == 4 and first["score"] == pytest.approx(1.0, abs=1e-6)
    assert set(rows["other_layer"]) == {"conv1", "relu1"}
    code, out, _ = _cli("query", str(twins.path), "--similar-to", "conv1:5")
    assert code == 0 and "conv1:5 has no neighbours" in out
    for spec, says in (("conv1", "LAYER:UNIT"), ("conv9:0", "conv9"), ("conv1:6", "units 0..5")):
        code, _, err = _cli("query", str(twins.path), "--similar-to", spec)
        assert code == 2 and says in err and "Traceback" not in err


def test_query_similar_to_without_the_stage(planted_run):
    code, _, err = _cli("query", str(planted_run.catalog), "--similar-to", "conv1:0")
    assert code == 2 and "[stages.similarity]" in err


def test_no_probe_images_is_a_job_error(tmp_path):
    make_images(tmp_path / "images", count=4)
    job = write_job(tmp_path, job_toml("twins", LAYERS, activations={"probe_images": 0}, similarity={}))
    code, _, err = _cli("run", str(job))
    assert code == 2 and "stages.activations.probe_images" in err


def test_no_neighbours_is_a_job_error(tmp_path):
    make_images(tmp_path / "images", count=4)
    job = write_job(tmp_path, job_toml("twins", LAYERS, similarity={"neighbours": 0}))
    code, _, err = _cli("run", str(job))
    assert code == 2 and "stages.similarity.neighbours" in err and "Traceback" not in err
