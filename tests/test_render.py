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
                                                    "permutations_per_round = 2\n[stages.similarity]\n[ray]"))
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
