"""The rendered site in a real headless Chromium (Debian's chromium, driven by Playwright: conftest's `browser`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import catalog_schema as cs
from catalog_schema import Catalog
from catalog_schema.storage import write_array
from conftest import check_page, dissection_job
from test_shapley_run import shapley_job
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")

SCRIPT_NAME = "<script>window.__pwned = 1</script>redthing"


@pytest.fixture(scope="module")
def activations_site(tmp_path_factory, planted_run) -> Path:
    """The site of conftest's planted catalog (activations only)."""
    site = tmp_path_factory.mktemp("render-activations") / "site"
    assert main(["render", str(planted_run.catalog), "--out", str(site)]) == 0
    return site


@pytest.fixture(scope="module")
def full_site(tmp_path_factory) -> Path:
    """Dissection and Shapley on the planted color detectors; one concept's name holds a script tag."""
    folder = tmp_path_factory.mktemp("render-full")
    job, world = dissection_job(folder)
    labels = folder / "broden" / "label.csv"
    labels.write_text(labels.read_text().replace(",redthing,", f',"{SCRIPT_NAME}",'))
    for i, scene in enumerate(world.scene):  # the images in class folders, for Shapley's labels
        target = folder / "images" / ("greenland" if scene == 4 else "grayland")
        target.mkdir(exist_ok=True)
        (folder / "images" / f"{i:03d}.png").rename(target / f"{i:03d}.png")
    job.write_text(job.read_text().replace("[ray]", "[stages.shapley]\nlayers = [\"relu\"]\nrounds = 2\n"
                                                    "permutations_per_round = 2\n[stages.similarity]\n[stages.unit_map]\n[ray]"))
    assert main(["run", str(job)]) == 0
    assert main(["render", str(folder / "catalog"), "--out", str(folder / "site")]) == 0
    return folder / "site"


@pytest.mark.parametrize("site_name", ["activations_site", "full_site"])
def test_every_page_loads_without_errors_and_every_image_shows(browser, request, site_name):
    site = request.getfixturevalue(site_name)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        errors, broken = check_page(browser, page.as_uri())
        assert errors == [] and broken == [], page
    assert sorted(p.name for p in (site / "contact").iterdir())  # a contact sheet per layer
    for html in pages:  # offline: no scheme, no absolute path, in any link or source
        text = html.read_text()
        assert not re.search(r"""(src|href)=["'](https?:|//|/)""", text), html


def test_filter_and_sort_change_what_is_shown(browser, full_site):
    page = browser.new_page()
    page.goto((full_site / "layers" / "relu.html").as_uri())
    cards = "Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden).map(c => c.dataset.unit)"
    assert page.evaluate(cards) == ["0", "1", "2"]
    page.fill("#filter", "REDTHING")  # case-insensitive; only unit 0's label holds it
    assert page.evaluate(cards) == ["0"] and page.inner_text("#shown") == "1 shown"
    page.fill("#filter", "")
    page.select_option("#sort", "iou")
    units = pd.read_parquet(full_site.parent / "catalog" / "units.parquet")
    expected = units[units["layer"] == "relu"].sort_values(["iou", "unit"], ascending=[False, True])["unit"].astype(str)
    assert page.evaluate(cards) == expected.tolist() != ["0", "1", "2"]
    page.select_option("#sort", "shapley")
    assert len(page.evaluate(cards)) == 3
    page.close()


def test_the_layer_map_colours_by_category_sizes_by_importance_and_follows_the_filter(browser, full_site):
    from pipeline.render.chart import category_color
    from pipeline.render.unit_map import NO_CONCEPT

    units = pd.read_parquet(full_site.parent / "catalog" / "units.parquet").set_index("unit")
    page = browser.new_page()
    page.goto((full_site / "layers" / "relu.html").as_uri())
    dots = page.eval_on_selector_all("#unit-map .dot", """ds => ds.map(d => [d.dataset.unit,
        d.querySelector('circle').getAttribute('fill'), parseFloat(d.querySelector('circle').getAttribute('r')),
        getComputedStyle(d).display !== 'none'])""")
    assert sorted(d[0] for d in dots) == ["0", "1", "2"]  # 3 units: laid out by PCA
    for unit, fill, _, shown in dots:
        row = units.loc[int(unit)]
        assert fill == (category_color(row["category"]) if row["interpretable"] else NO_CONCEPT) and shown
    assert any(fill != NO_CONCEPT for _, fill, _, _ in dots)
    by_size = [d[0] for d in sorted(dots, key=lambda d: -d[2])]
    assert by_size == [str(u) for u in units["shapley"].abs().sort_values(ascending=False, kind="stable").index]
    page.fill("#filter", "REDTHING")
    shown = page.eval_on_selector_all("#unit-map .dot", "ds => ds.filter(d => getComputedStyle(d).display !== 'none')"
                                                       ".map(d => d.dataset.unit)")
    assert shown == ["0"]
    page.close()


def test_the_search_box_finds_units_of_every_layer_by_name_synonym_and_category(browser, full_site):
    """mini_broden: unit 0 is labelled redthing (synonyms "scarlet blob;crimson thing"), units 1 and 2 greenland
    (synonym "meadow")."""
    page = browser.new_page()
    page.goto((full_site / "index.html").as_uri())
    found = "Array.from(document.querySelectorAll('#search-results a')).map(a => a.textContent)"
    page.fill("#search", "CRIMSON")
    assert page.evaluate(found) == ["relu unit 0"] and page.inner_text("#search-count") == "1 unit"
    page.fill("#search", "meadow")
    assert sorted(page.evaluate(found)) == ["relu unit 1", "relu unit 2"]
    page.fill("#search", "")
    page.select_option("#search-category", "object")
    assert page.evaluate(found) == ["relu unit 0"]
    page.click("#search-results a")
    assert page.url.endswith("units/relu/0.html")
    page.close()


def test_each_unit_page_shows_its_nearest_units(browser, full_site):
    near = Catalog.open(full_site.parent / "catalog").similar("relu", 0).sort_values("rank")
    page = browser.new_page()
    page.goto((full_site / "units" / "relu" / "0.html").as_uri())
    links = page.evaluate("Array.from(document.querySelectorAll('.similar a')).map(a => a.getAttribute('href'))")
    assert links == [f"../relu/{u}.html" for u in near["other_unit"]] and len(links) == 2
    assert all((full_site / "units" / "relu" / link).resolve().is_file() for link in links)
    assert "nearest in relu by activation correlation" in page.inner_text("body")
    page.close()


def test_a_concept_name_with_a_script_tag_shows_as_text(browser, full_site):
    page = browser.new_page()
    for url in ("units/relu/0.html", "layers/relu.html", "index.html"):
        page.goto((full_site / url).as_uri())
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert SCRIPT_NAME in page.inner_text("body"), url
    page.close()


def test_render_refuses_a_folder_that_is_not_a_site(tmp_path, planted_run, activations_site, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["render", str(planted_run.catalog), "--out", str(other)]) == 2
    assert "is not a site written by" in capsys.readouterr().err and (other / "notes.txt").exists()
    assert main(["render", str(planted_run.catalog), "--out", str(activations_site)]) == 0  # a site: replaced


def test_feature_visualizations_show_when_the_catalog_has_them(browser, tmp_path, planted_run):
    catalog = tmp_path / "catalog"
    shutil.copytree(planted_run.catalog, catalog)
    views = np.zeros((4, 3, 16, 16, 3), np.uint8)
    views[:, 0, :, :, 0] = 255  # positive: red, negative: black, diverse: green
    views[:, 2, :, :, 1] = 255
    write_array(catalog, cs.FEATVIS, "conv1", views)
    assert main(["render", str(catalog), "--out", str(tmp_path / "site")]) == 0
    page = browser.new_page()
    page.goto((tmp_path / "site" / "units" / "conv1" / "0.html").as_uri())
    captions = page.eval_on_selector_all("figcaption", "els => els.map(e => e.textContent)")
    assert captions == ["positive", "negative", "diverse"]
    assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
    page.goto((tmp_path / "site" / "layers" / "conv1.html").as_uri())
    assert page.evaluate("document.querySelectorAll('.card img[alt^=\"feature visualization\"]').length") == 4
    page.goto((tmp_path / "site" / "layers" / "conv2.html").as_uri())  # a layer without: examples only
    assert page.evaluate("document.querySelectorAll('.card img[alt^=\"feature visualization\"]').length") == 0
    page.close()


@pytest.fixture(scope="module")
def importance_sites(tmp_path_factory) -> dict[str, Path]:
    """test_shapley_run's planted model (classes a_bg, b_warm, c_green): 'banzhaf' values the units of both
    layers by Banzhaf only; 'both' runs TMC then Banzhaf on relu's units (fc's units are not players); 'msr' values
    the units of both layers by the MSR Shapley estimator."""
    sites = {}
    for name, settings in (("banzhaf", {"estimator": "banzhaf", "banzhaf_samples": 64, "layers": ["relu", "fc"]}),
                           ("both", {"estimator": "both", "banzhaf_samples": 64}),
                           ("msr", {"estimator": "msr", "msr_samples": 256, "layers": ["relu", "fc"]})):
        folder = tmp_path_factory.mktemp(f"render-{name}")
        assert main(["run", str(shapley_job(folder, **settings))]) == 0
        assert main(["render", str(folder / "catalog"), "--out", str(folder / "site")]) == 0
        sites[name] = folder / "site"
    return sites


def _expected_by_layer(values: pd.DataFrame, layers: list[str]) -> list[tuple[str, int, int, int]]:
    """(layer, players, units among the top 10% (at least 1) by value, units with ci_low > 0), from the table."""
    n = max(1, len(values) // 10)
    top = values.sort_values(["value", "layer", "unit"], ascending=[False, True, True]).head(n)
    return [(layer, int((values["layer"] == layer).sum()), int((top["layer"] == layer).sum()),
             int(((values["layer"] == layer) & (values["ci_low"] > 0)).sum())) for layer in layers]


@pytest.mark.parametrize("name, table, layers, estimator", [
    ("banzhaf", "banzhaf", ["relu", "fc"], "Banzhaf"),
    ("both", "shapley", ["relu"], "Shapley (TMC)"),
    ("msr", "shapley", ["relu", "fc"], "Shapley (MSR)"),
], ids=["banzhaf only", "tmc and banzhaf", "msr"])
def test_the_index_charts_important_units_by_layer(browser, importance_sites, name, table, layers, estimator):
    site = importance_sites[name]
    values = pd.read_parquet(site.parent / "catalog" / f"{table}.parquet")
    expected = _expected_by_layer(values, layers)
    assert sum(positive for *_, positive in expected) >= 2  # the planted units' intervals are above 0
    assert check_page(browser, (site / "index.html").as_uri()) == ([], [])
    page = browser.new_page()
    page.goto((site / "index.html").as_uri())
    shown = page.eval_on_selector_all(".importance-chart .layer-bars", """groups => groups.map(g => [
        g.querySelector('.bar-label').textContent, Number(g.querySelector('.top .count').textContent),
        Number(g.querySelector('.positive .count').textContent)])""")
    assert shown == [[f"{layer} ({players})", top, positive] for layer, players, top, positive in expected]
    body = page.inner_text("body")
    n = max(1, len(values) // 10)
    assert f"top N = {n} of all {len(values)} players" in body and "10% of the players, at least 1" in body
    assert f"Units the metric rests on ({estimator} value: accuracy)" in body
    page.close()


def test_a_player_unit_page_shows_one_bar_per_class(browser, importance_sites):
    """Each player's page: a bar per class of the run's first estimator (Banzhaf alone; TMC when both ran),
    from zero to its value, with its interval; nothing on a unit that is not a player."""
    for name, estimator, players in (("banzhaf", "banzhaf", ["relu", "fc"]), ("both", "tmc", ["relu"]),
                                     ("msr", "msr", ["relu", "fc"])):
        site = importance_sites[name]
        by_class = pd.read_parquet(site.parent / "catalog" / "importance_by_class.parquet")
        by_class = by_class[by_class["estimator"] == estimator]
        page = browser.new_page()
        for (layer, unit), rows in by_class.groupby(["layer", "unit"]):
            assert layer in players
            page.goto((site / "units" / layer / f"{unit}.html").as_uri())
            shown = page.eval_on_selector_all(".class-importance tbody tr", """rows => rows.map(r => {
                const bars = r.querySelectorAll('rect.class-bar'), zero = r.querySelector('svg > line:last-child');
                const bar = bars[0];
                return [r.querySelector('.class-name').textContent, bars.length, r.querySelector('.class-value').textContent,
                        Number(bar.getAttribute('x')), Number(bar.getAttribute('width')), Number(zero.getAttribute('x1'))];
            })""")
            rows = rows.sort_values("class")
            assert [s[:3] for s in shown] == [[r.class_name, 1, f"{r.value:.4g} [{r.ci_low:.4g}, {r.ci_high:.4g}]"]
                                              for r in rows.itertuples()]
            assert [s[0] for s in shown] == ["a_bg", "b_warm", "c_green"]
            for (_, _, _, x, width, zero), value in zip(shown, rows["value"]):  # from zero towards the value
                assert (x == pytest.approx(zero) if value > 0 else x + width == pytest.approx(zero)) or width == 0
        page.goto((site / "units" / "fc" / "0.html").as_uri())
        assert page.locator("#importance-by-class").count() == (1 if "fc" in players else 0)
        page.close()


def test_no_class_bars_without_the_per_class_table(browser, tmp_path, importance_sites):
    """An older catalog (no importance_by_class.parquet): the unit pages have no per-class section."""
    catalog = tmp_path / "catalog"
    shutil.copytree(importance_sites["both"].parent / "catalog", catalog, symlinks=True)
    (catalog / "importance_by_class.parquet").unlink()
    assert main(["render", str(catalog), "--out", str(tmp_path / "site")]) == 0
    page = browser.new_page()
    page.goto((tmp_path / "site" / "units" / "relu" / "1.html").as_uri())
    assert page.locator("#importance-by-class").count() == 0 and "shapley_ci_low" in page.inner_text("body")
    page.goto((tmp_path / "site" / "index.html").as_uri())
    assert page.locator(".importance-chart .layer-bars").count() == 1
    page.close()
