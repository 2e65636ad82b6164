"""The map of units (the unit_map stage): planted groups of units land together, a layout repeats bit for bit whatever
the number of threads or workers, a handful of units get an exact PCA; then a run, the catalog and the layer page."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.stages.similarity.neighbours import correlation_rows
from pipeline.stages.unit_map.layout import unit_layout

GROUPS, SIZE = 4, 40


def _grouped_rows(seed: int = 0, dims: int = 48):
    """GROUPS groups of SIZE units: each unit is its group's response pattern plus noise of a third of its size."""
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(GROUPS, dims))
    values = np.repeat(bases, SIZE, axis=0) + rng.normal(scale=0.35, size=(GROUPS * SIZE, dims))
    return correlation_rows(values), np.repeat(np.arange(GROUPS), SIZE)


def _nearest_in_group(xy: np.ndarray, group: np.ndarray, k: int) -> float:
    """The share of units whose k nearest units on the map are all of their own group."""
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((group[nearest] == group[:, None]).all(axis=1).mean())


def test_planted_groups_land_together():
    rows, group = _grouped_rows()
    layout = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=0)
    assert layout.method == "pacmap"
    assert layout.xy.dtype == np.float32 and np.isfinite(layout.xy).all()
    assert layout.xy.min() >= 0 and layout.xy.max() <= 1
    assert _nearest_in_group(layout.xy, group, 5) == 1.0
    centres = np.array([layout.xy[group == g].mean(axis=0) for g in range(GROUPS)])
    spread = max(np.linalg.norm(layout.xy[group == g] - centres[g], axis=1).max() for g in range(GROUPS))
    apart = min(np.linalg.norm(centres[a] - centres[b]) for a in range(GROUPS) for b in range(a))
    assert apart > 2 * spread  # the groups are islands, not a continuum


SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_unit_map import _grouped_rows
from pipeline.stages.unit_map.layout import unit_layout
rows, _ = _grouped_rows(1)
sys.stdout.buffer.write(unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=3).xy.tobytes())
"""


def test_a_layout_repeats_bit_for_bit_whatever_the_threads():
    """Here with every thread the machine has; there with one."""
    threads = "1"
    rows, _ = _grouped_rows(1)
    here = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=3).xy
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(__file__))], env=env,
                         capture_output=True, check=True).stdout
    assert out == here.tobytes()
    other = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=4).xy
    assert not np.array_equal(other, here)  # the seed is used


def test_a_handful_of_units_get_an_exact_pca_and_dead_units_no_place():
    """6 units whose vectors lie in a plane: PCA keeps their distances up to one scale; 2 constant units get none."""
    rng = np.random.default_rng(0)
    plane = np.linalg.qr(rng.normal(size=(10, 2)))[0].T  # 2 orthonormal rows
    points = rng.normal(size=(6, 2))
    unit = np.zeros((8, 10))
    unit[:6] = points @ plane
    valid = np.array([True] * 6 + [False] * 2)
    layout = unit_layout(unit, valid, "pacmap", 10, seed=0)
    assert layout.method == "pca"  # too few units for PaCMAP's neighbour pairs
    assert np.isnan(layout.xy[6:]).all()
    placed = layout.xy[:6].astype(np.float64)

    def distances(p: np.ndarray) -> np.ndarray:
        return np.linalg.norm(p[:, None] - p[None], axis=2)[np.triu_indices(6, 1)]

    ratio = distances(placed) / distances(points)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    one = unit_layout(unit[:1], np.array([True]), "pacmap", 10, seed=0)
    assert one.method == "none" and one.xy.tolist() == [[0.5, 0.5]]


# --- through a run ---------------------------------------------------------------------------------------------

def _grouped_catalog(folder, workers: int):
    from catalog_schema import Catalog
    from conftest import job_toml, make_images, run_cli, write_job

    make_images(folder / "images", count=24)
    job = write_job(folder, job_toml("grouped", ["mix"], k=2, patch=8, maps={}, workers=workers, shard=6))
    return Catalog.open(run_cli(job).catalog)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, ray_local):
    """tests/assets/tiny_models.py:grouped (three planted groups of 8 units in `mix`, and a constant unit) mapped."""
    return _grouped_catalog(tmp_path_factory.mktemp("map"), workers=1)


def test_a_run_maps_the_planted_groups_together(grouped):
    units = grouped.units().sort_values("unit")
    assert units["map_x"].iloc[24] is None or np.isnan(units["map_x"].iloc[24])  # the constant unit
    xy = units[["map_x", "map_y"]].to_numpy(np.float64)[:24]
    assert np.isfinite(xy).all()
    assert _nearest_in_group(xy, np.repeat(np.arange(3), 8), 3) == 1.0
    assert grouped.manifest["unit_map"]["mix"] == {"method": "pacmap", "vectors": "probe activations", "placed": 24}
    from pipeline.catalog.describe import describe

    assert "map          1 layer(s) laid out (pacmap), 24 of 25 units placed" in describe(grouped)


def test_the_map_is_the_same_with_two_workers(grouped, tmp_path):
    again = _grouped_catalog(tmp_path, workers=2).units().sort_values("unit")
    mine = grouped.units().sort_values("unit")
    for column in ("map_x", "map_y"):
        assert again[column].astype(float).tolist()[:24] == mine[column].astype(float).tolist()[:24]


def test_the_layer_page_draws_every_placed_unit_linked_to_its_page(grouped, tmp_path, browser):
    from pipeline.cli import main

    site = tmp_path / "site"
    assert main(["render", str(grouped.path), "--out", str(site)]) == 0
    page = browser.new_page()
    try:
        page.goto((site / "layers" / "mix.html").as_uri())
        dots = page.locator("#unit-map .dot")
        assert dots.count() == 24
        assert "1 unit(s) without a vector" in page.inner_text("main")
        hrefs = page.eval_on_selector_all("#unit-map .dot", "ds => ds.map(d => d.getAttribute('href'))")
        assert sorted(hrefs) == sorted(f"../units/mix/{u}.html" for u in range(24))
        # a dot drawn on top at its own centre (a group's dots overlap), clicked as a person would
        unit, x, y = page.evaluate("""() => {
            for (const dot of document.querySelectorAll('#unit-map .dot')) {
                const b = dot.querySelector('circle').getBoundingClientRect();
                const x = b.x + b.width / 2, y = b.y + b.height / 2;
                if (dot.contains(document.elementFromPoint(x, y))) { return [dot.dataset.unit, x, y]; }
            }
        }""")
        page.mouse.click(x, y)
        page.wait_for_url(f"**/units/mix/{unit}.html")
    finally:
        page.close()
