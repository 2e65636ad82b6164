"""The activation spectrum (Distill, "Investigating a single neuron"): dataset examples at evenly spaced quantiles of
each unit's spatial maxima, checked against a planted unit whose spatial max is known for every image; the same
whatever the shards; carried over by re-analysis; shown on the unit page as a strip; absent from older catalogs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import catalog_schema as cs
from catalog_schema import Catalog
from catalog_schema.storage import write_array
from conftest import check_page, job_toml, planted_job, run_cli, write_job
from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations.settings import ActivationsSettings
from pipeline.stages.activations.spectrum import Maxima, select
from pipeline.stages.activations.stage import check_spectrum_memory

pytestmark = pytest.mark.usefixtures("ray_local")

N, Q, K, PATCH = 20, 4, 3, 8
# background brightness by the rank of the image's bright pixel: ties of 2, 3 and 4 images (more than K)
TIERS = np.array([10, 10, 10, 10, 40, 40, 70, 70, 70, 100, 100, 130, 130, 130, 130, 160, 160, 190, 190, 190])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """N gray 16 px images (image id i = file i): background g_i and one brighter pixel v_i at (y_i, x_i), never (0, 0).
    The brightness model's conv unit 0 then has its spatial max v_i / 255 at (y_i, x_i), unit 1 (its negative)
    -g_i / 255 at (0, 0), the first of the background's equal values."""
    folder = tmp_path_factory.mktemp("spectrum")
    rank = np.random.default_rng(0).permutation(N)
    v, g = 60 + 10 * rank, TIERS[rank]
    yx = [(i % 7 + 1, (3 * i) % 11 + 2) for i in range(N)]
    (folder / "images").mkdir()
    for i in range(N):
        pixels = np.full((16, 16, 3), g[i], np.uint8)
        pixels[yx[i]] = v[i]
        Image.fromarray(pixels).save(folder / "images" / f"{i:03d}.png")
    return SimpleNamespace(folder=folder, v=v, g=g, yx=yx)


def spectrum_toml(catalog: str = "catalog", shard: int = 1000, workers: int = 1, previous: str | None = None,
                  **activations) -> str:
    return job_toml("brightness", ["conv"], input_size=16, k=2, patch=PATCH, shard=shard, workers=workers, catalog=catalog,
                    activations={"spectrum_quantiles": Q, "spectrum_k": K, **activations}, top={"previous": previous})


def run_job(world: SimpleNamespace, text: str, catalog: str) -> Catalog:
    job = write_job(world.folder, text)
    assert main(["run", str(job)]) == 0
    return Catalog.open(world.folder / catalog)


@pytest.fixture(scope="module")
def catalog(world) -> Catalog:
    return run_job(world, spectrum_toml(), "catalog")


def by_hand(values: np.ndarray) -> list[tuple[float, float, list[int]]]:
    """(level, np.quantile's value, the K image ids nearest it: by distance, then id) of each level."""
    out = []
    for i in range(Q):
        level = (i + 0.5) / Q
        target = float(np.quantile(values, level))
        order = sorted(range(N), key=lambda j: (abs(values[j] - target), j))
        for a, b in zip(order[:K], order[1:K + 1]):  # no near tie of different values: float32 cannot reorder them
            assert values[a] == values[b] or abs(abs(values[a] - target) - abs(values[b] - target)) > 1e-3
        out.append((level, target, order[:K]))
    return out


@pytest.mark.parametrize("unit", [0, 1])
def test_each_quantile_holds_the_images_nearest_its_value(world, catalog, unit):
    values = (world.v if unit == 0 else -world.g) / 255.0
    rows = catalog.spectrum("conv", unit)
    assert list(rows.columns) == cs.TABLES["spectrum"].names and len(rows) == Q * K
    assert rows["rank"].tolist() == list(range(Q * K))
    crops = catalog.spectrum_images("conv", unit)
    assert crops.shape == (Q * K, PATCH, PATCH, 3) and catalog.spectrum_images("conv").shape == (2, Q * K, PATCH, PATCH, 3)
    for i, (level, target, nearest) in enumerate(by_hand(values)):
        mine = rows[rows["rank"] // K == i]
        assert mine["image_id"].tolist() == nearest, (unit, level)
        np.testing.assert_allclose(mine["quantile"], level)
        np.testing.assert_allclose(mine["quantile_value"], target, rtol=1e-6)
        np.testing.assert_allclose(mine["activation"], values[nearest], rtol=1e-6)
        yx = [world.yx[j] if unit == 0 else (0, 0) for j in nearest]
        assert list(zip(mine["y"], mine["x"])) == yx
        assert list(zip(mine["box_y0"], mine["box_x0"], mine["box_y1"], mine["box_x1"])) == [(y, x, y + 1, x + 1) for y, x in yx]
        for rank, j in zip(mine["rank"], nearest):  # a 1x1 field: the crop is that one pixel, enlarged
            assert (crops[rank] == (world.v[j] if unit == 0 else world.g[j])).all()


def test_ties_go_to_the_smaller_image_ids(world, catalog):
    """Unit 1 at level 0.375: its value is exactly -130 / 255, the background of 4 images; the 3 smallest ids win."""
    tied = sorted(np.flatnonzero(world.g == 130).tolist())
    assert len(tied) == 4
    rows = catalog.spectrum("conv", 1)
    assert rows[rows["quantile"] == 0.375]["image_id"].tolist() == tied[:3]


def test_top_and_bottom_examples_are_unchanged(world, catalog):
    ex = catalog.examples("conv", 0)
    assert ex["sign"].tolist() == ["top", "top", "bottom", "bottom"] and ex["rank"].tolist() == [0, 1, 0, 1]
    assert ex["image_id"].iloc[0] == int(np.argmax(world.v))
    crops, heat = catalog.example_images("conv", 0)
    assert crops.shape == (4, PATCH, PATCH, 3) and heat.shape == (4, PATCH, PATCH)


def test_the_same_whatever_the_shards_and_workers(world, catalog, planted_run, tmp_path):
    sharded = run_job(world, spectrum_toml("sharded", shard=4, workers=2), "sharded")  # 5 shards of one batch
    pd.testing.assert_frame_equal(sharded.spectrum(), catalog.spectrum(), check_exact=True)
    np.testing.assert_array_equal(sharded.spectrum_images("conv"), catalog.spectrum_images("conv"))
    # the planted model (3 layers, padded 3x3 fields, a Linear layer): conftest's one-shard catalog against 6 shards
    many = run_cli(planted_job(tmp_path / "many", shard=4, workers=2)).catalog
    a, b = Catalog.open(planted_run.catalog), Catalog.open(many)
    assert len(a.spectrum()) == sum(info["units"] for info in a.manifest["layers"]) * 8 * 4  # the defaults: Q 8, k 4
    pd.testing.assert_frame_equal(a.spectrum(), b.spectrum(), check_exact=True)
    for layer in a.layers:
        np.testing.assert_array_equal(a.spectrum_images(layer), b.spectrum_images(layer))


def test_select_ignores_chunk_order_and_matches_brute_force():
    rng = np.random.default_rng(3)
    n, c = 37, 5
    values = rng.integers(0, 6, size=(n, c)).astype(np.float32)  # many exact ties
    ids = rng.permutation(1000)[:n].astype(np.int64)
    positions = rng.integers(0, 9, size=(n, c)).astype(np.uint8)
    chunks = [slice(0, 10), slice(10, 11), slice(11, 30), slice(30, n)]
    forward = Maxima([ids[s] for s in chunks], [values[s] for s in chunks], [positions[s] for s in chunks])
    backward = Maxima(*([part[s] for s in reversed(chunks)] for part in (ids, values, positions)))
    a, b = select(forward, 6, 4), select(backward, 6, 4)
    for field in ("quantile_value", "image_id", "value", "position"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for u in range(c):
        for i, level in enumerate((np.arange(6) + 0.5) / 6):
            target = np.quantile(values[:, u], level)
            best = sorted(range(n), key=lambda j: (abs(float(values[j, u]) - target), ids[j]))[:4]
            assert a.image_id[u, i].tolist() == ids[best].tolist()
            assert a.position[u, i].tolist() == positions[best, u].tolist()


def test_fewer_images_than_k_keeps_them_all():
    m = Maxima([np.array([4, 2])], [np.array([[1.0], [3.0]], np.float32)], [np.zeros((2, 1), np.uint8)])
    chosen = select(m, 2, 5)
    assert chosen.image_id.tolist() == [[[4, 2], [2, 4]]]


def _strip(browser, page_path: Path) -> list[tuple[str, str, str]]:
    page = browser.new_page()
    page.goto(page_path.as_uri())
    items = page.eval_on_selector_all(".spectrum .spectrum-item", """items => items.map(i => [i.dataset.kind,
        i.querySelector('.spectrum-title').textContent, i.querySelector('img').getAttribute('src')])""")
    page.close()
    return [tuple(item) for item in items]


EXPECTED_TITLES = {0: ["slightly positive", "positive", "positive", "positive"],  # act_max 250 / 255
                   1: ["negative", "negative", "slightly negative", "slightly negative"]}  # act_min -250 / 255


@pytest.mark.parametrize("with_featvis", [False, True], ids=["examples only", "with feature visualizations"])
def test_the_unit_page_shows_the_strip_in_order(browser, catalog, tmp_path, with_featvis):
    path = catalog.path
    if with_featvis:
        path = tmp_path / "catalog"
        shutil.copytree(catalog.path, path)
        write_array(path, cs.FEATVIS, "conv", np.full((2, 3, 16, 16, 3), 200, np.uint8))  # positive, negative, diverse
    site = tmp_path / "site"
    assert main(["render", str(path), "--out", str(site)]) == 0
    for unit in (0, 1):
        page = site / "units" / "conv" / f"{unit}.html"
        assert check_page(browser, page.as_uri()) == ([], [])
        strip = _strip(browser, page)
        kinds = ["minimum", *["quantile"] * Q, "maximum"]
        titles = ["minimum", *EXPECTED_TITLES[unit], "maximum"]
        sources = [f"{unit}-min.jpg", *[f"{unit}-q{i}.jpg" for i in range(Q)], f"{unit}-max.jpg"]
        if with_featvis:
            kinds = ["negative optimized", *kinds, "positive optimized"]
            titles = ["negative optimized", *titles, "positive optimized"]
            sources = [f"{unit}-fv1.png", *sources, f"{unit}-fv0.png"]
        assert [s[0] for s in strip] == kinds and [s[1] for s in strip] == titles
        assert [s[2] for s in strip] == [f"../../img/conv/{name}" for name in sources]
    text = (site / "units" / "conv" / "0.html").read_text()
    assert 'data-quantile="0.125"' in text and "quantile 0.125: 0.3284" in text  # (80 + 0.375 * 10) / 255
    quantile0 = np.asarray(Image.open(site / "img" / "conv" / "0-q0.jpg"))
    assert quantile0.shape == (PATCH, K * PATCH + (K - 1) * 2, 3)  # the K crops of the level in one row


def _older(catalog: Catalog, to: Path) -> Path:
    """The catalog as a run before the spectrum existed wrote it: no table, no arrays, no settings or input hash."""
    shutil.copytree(catalog.path, to)
    (to / "spectrum.parquet").unlink()
    shutil.rmtree(to / cs.STORE / "spectrum")
    manifest = json.loads((to / cs.MANIFEST).read_text())
    for key in ("spectrum_quantiles", "spectrum_k", "spectrum_memory_mb"):
        del manifest["settings"]["activations"][key]
    for parts in manifest["fingerprints"]["inputs"]["activations"].values():
        del parts["spectrum"]
    (to / cs.MANIFEST).write_text(json.dumps(manifest))
    return to


def test_an_older_catalog_without_spectrum_opens_and_renders(browser, catalog, tmp_path):
    old = Catalog.open(_older(catalog, tmp_path / "old"))
    assert old.spectrum().empty and list(old.spectrum("conv", 0).columns) == cs.TABLES["spectrum"].names
    assert old.spectrum_images("conv", 0) is None
    pd.testing.assert_frame_equal(old.examples(), catalog.examples())
    assert main(["render", str(old.path), "--out", str(tmp_path / "site")]) == 0
    page = tmp_path / "site" / "units" / "conv" / "0.html"
    assert check_page(browser, page.as_uri()) == ([], []) and _strip(browser, page) == []
    assert "Activation spectrum" not in page.read_text() and "Top examples" in page.read_text()


def _actions(cat: Catalog) -> dict[str, str]:
    return {layer: r["action"] + ": " + r["why"] for layer, r in cat.manifest["reuse"]["stages"]["activations"].items()}


def test_reanalysis_carries_the_spectrum_over_and_recomputes_it_when_its_settings_change(world, catalog, tmp_path):
    same = run_job(world, spectrum_toml("same", previous=str(catalog.path)), "same")
    assert _actions(same) == {"conv": "reused: its inputs are unchanged"}
    pd.testing.assert_frame_equal(same.spectrum(), catalog.spectrum(), check_exact=True)
    np.testing.assert_array_equal(same.spectrum_images("conv"), catalog.spectrum_images("conv"))
    fewer = run_job(world, spectrum_toml("fewer", previous=str(catalog.path), spectrum_quantiles=2), "fewer")
    assert _actions(fewer)["conv"].startswith("computed: the activation spectrum's settings changed")
    assert sorted(fewer.spectrum()["quantile"].unique()) == [0.25, 0.75]
    assert fewer.spectrum_images("conv").shape == (2, 2 * K, PATCH, PATCH, 3)
    old = _older(catalog, tmp_path / "old")
    upgraded = run_job(world, spectrum_toml("upgraded", previous=str(old)), "upgraded")  # an older catalog: computed
    assert _actions(upgraded)["conv"].startswith("computed: the activation spectrum's settings changed")
    pd.testing.assert_frame_equal(upgraded.spectrum(), catalog.spectrum(), check_exact=True)
    off = run_job(world, spectrum_toml("off", previous=str(old), spectrum_quantiles=0), "off")  # no spectrum: reused
    assert _actions(off) == {"conv": "reused: its inputs are unchanged"}
    assert not (off.path / "spectrum.parquet").exists() and off.spectrum_images("conv") is None


def test_a_spectrum_over_the_memory_limit_is_refused_before_any_work():
    plan = SimpleNamespace(images=SimpleNamespace(records=[None] * 100_000), layers=[LayerInfo("layer1", (64, 56, 56), 1)])
    check_spectrum_memory(plan, ActivationsSettings(spectrum_memory_mb=64))  # 100k x 64 x (4 + 2) bytes: 36.6 MiB
    with pytest.raises(UserError) as err:
        check_spectrum_memory(plan, ActivationsSettings(spectrum_memory_mb=32))
    assert "'stages.activations.spectrum_memory_mb'" in str(err.value) and "37 MiB" in str(err.value)
    assert "spectrum_quantiles = 0" in str(err.value)


def test_describe_names_the_spectrum(catalog):
    from pipeline.catalog.describe import describe

    assert f"spectrum     examples at {Q} quantiles of each unit's spatial maxima, {K} each" in describe(catalog)
