"""Dissecting a generator (GAN Dissection) on a planted layout generator whose answers are known without training
(tests/assets/generators.py): every object is drawn by known units in a palette colour of the concept world (read
by the exact palette segmenter), one unit is dead, one object is drawn by either of a twin pair, and 58 filler units
draw nothing."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog_schema import Catalog
from conftest import ASSETS, Run, check_page, run_cli
from pipeline.cli import main
from pipeline.generators.latents import sample_latents
from pipeline.generators.palette import PaletteSegmenter
from pipeline.job.config import LatentsConfig
from pipeline.stages.dissection import iqr

sys.path.insert(0, str(ASSETS))
from generators import BACKGROUND, DRAWN_BY, OBJECTS, PlantedLayout  # noqa: E402

LAYERS = ["coarse", "layout"]


def generator_toml(count: int = 64, threshold: str = "quantile", interventions: bool = True, shard: int = 256,
                   workers: int = 1, extra: str = "", featvis: bool = False) -> str:
    text = f"""seed = 0
[model]
factory = "generators.py:planted_layout"
layers = {json.dumps(LAYERS)}
layouts = {{ "coarse" = "nchw", "layout" = "nchw" }}
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[latents]
count = {count}
shape = [12]
[concepts]
segmenter = "pipeline.generators.palette:palette_segmenter"
[stages.activations]
k = 4
patch_size = 16
[stages.dissection]
quantile = 0.1
threshold = "{threshold}"
{extra}
[ray]
workers = {workers}
shard_images = {shard}
[output]
catalog = "catalog"
"""
    if featvis:
        text += '[stages.featvis]\nlayers = ["coarse"]\nsteps = 128\nsize = 16\nbatch_units = 64\n'
    if interventions:
        text += '[stages.interventions]\nlayers = ["layout"]\nmax_units = 6\nimages = 8\nexamples = 2\n'
    return text


def generator_job(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "generators.py", folder / "generators.py")
    (folder / "job.toml").write_text(text)
    return folder / "job.toml"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_local) -> Run:
    return run_cli(generator_job(tmp_path_factory.mktemp("generator"), generator_toml(featvis=True)))


def _rows(catalog: Catalog, concept: str, intervention: str, source: str):
    t = catalog.interventions("layout")
    return t[(t.concept == concept) & (t.intervention == intervention) & (t.units_from == source)].sort_values("n")


def test_dissection_labels_each_planted_unit_with_its_object_and_the_dead_unit_with_nothing(planted):
    units = Catalog.open(planted.catalog).units().set_index(["layer", "unit"])
    for concept, channels in DRAWN_BY.items():
        for u in channels:
            assert units.loc[("layout", u), "label"] == concept
            assert units.loc[("layout", u), "iou"] >= 0.95
    dead = units.loc[("layout", 5)]
    assert bool(dead["dead"]) and not isinstance(dead["label"], str) and dead["iou"] == 0


def test_top_examples_are_generated_images_showing_the_unit_s_object(planted):
    catalog = Catalog.open(planted.catalog)
    images = catalog.images().set_index("image_id")
    sample = Path(catalog.manifest["prepared"]["generated_sample"]["path"])
    latents = np.load(sample / "latents.npy")
    for row in catalog.examples("layout", 0).query("sign == 'top'").itertuples():
        name = Path(images.loc[row.image_id, "path"]).name
        z = torch.from_numpy(latents[int(Path(name).stem)][None])
        with torch.no_grad():
            red = PlantedLayout().coarse(z)[0, 0]
        assert red.max() == 1  # the image the unit fires most on holds its object
        assert row.activation == 1.0


def test_ablating_a_unit_removes_its_object_and_random_units_remove_about_nothing(planted):
    catalog = Catalog.open(planted.catalog)
    for concept in ("red", "green", "blue"):
        top = _rows(catalog, concept, "ablate", "top")
        assert top.iloc[0]["units"].tolist() == list(DRAWN_BY[concept])
        assert top.iloc[0]["fraction"] >= 0.99 and top.iloc[0]["pixels_before"] > 0
    for concept in OBJECTS:
        random = _rows(catalog, concept, "ablate", "random")
        assert random.iloc[0]["fraction"] <= 0.1 and random.iloc[0]["draws"] == 3


def test_a_twin_pair_s_object_is_removed_only_when_both_are_ablated(planted):
    top = _rows(Catalog.open(planted.catalog), "yellow", "ablate", "top")
    assert sorted(top.iloc[1]["units"].tolist()) == [3, 4]
    assert top.iloc[0]["fraction"] <= 0.01
    assert top.iloc[1]["fraction"] >= 0.99


def test_inserting_a_unit_draws_its_object_at_the_chosen_place(planted):
    """The square is drawn in the object's colour except where an object painted after it (in DRAWN_BY's order)
    already lies; nothing changes outside it."""
    catalog = Catalog.open(planted.catalog)
    y0, x0, y1, x1 = catalog.manifest["interventions"]["layers"]["layout"]["region"]
    assert (y0, x0, y1, x1) == (12, 12, 20, 20)  # a quarter of the 32-cell grid's side, at its centre
    order = list(OBJECTS)
    for concept in OBJECTS:
        top = _rows(catalog, concept, "insert", "top")
        assert top.iloc[0]["fraction"] >= 0.9 and top.iloc[0]["pixels_before"] == 0
        later = np.array([OBJECTS[c] for c in order[order.index(concept) + 1:]] or [(-1, -1, -1)])
        for absent, inserted in catalog.intervention_strip("layout", concept)[:, 2:4]:
            inside = np.zeros((32, 32), bool)
            inside[y0:y1, x0:x1] = True
            assert not np.any(absent != inserted, axis=-1)[~inside].any()
            covered = (absent[..., None, :] == later).all(axis=-1).any(axis=-1)
            assert (inserted[inside & ~covered] == OBJECTS[concept]).all()
            assert (inserted[inside & covered] == absent[inside & covered]).all()
            assert (inside & ~covered).sum() >= 32


def test_the_strips_show_the_object_before_and_gone_after_ablation(planted):
    catalog = Catalog.open(planted.catalog)
    strip = catalog.intervention_strip("layout", "red")
    assert strip.shape == (2, 4, 32, 32, 3)
    for present, ablated in strip[:, :2]:
        assert (present == OBJECTS["red"]).all(axis=-1).sum() >= 64
        assert not (ablated == OBJECTS["red"]).all(axis=-1).any()
        assert (ablated == BACKGROUND).all(axis=-1).sum() > (present == BACKGROUND).all(axis=-1).sum()


def test_the_iqr_rule_finds_the_objects_on_the_coarse_grid_too(tmp_path, ray_local):
    run = run_cli(generator_job(tmp_path, generator_toml(threshold="iqr", interventions=False)))
    units = Catalog.open(run.catalog).units().set_index(["layer", "unit"])
    for concept, channels in DRAWN_BY.items():
        for u in channels:
            assert units.loc[("layout", u), "label"] == concept and units.loc[("layout", u), "iou"] == 1.0
            assert units.loc[("coarse", u), "label"] == concept and units.loc[("coarse", u), "iou"] >= 0.85


def test_the_iqr_threshold_is_the_level_that_separates_a_unit_from_its_concept():
    """By hand: 100 pixels, a concept on 10 of them; the unit is 2 on those, 1 on 10 others and 0 elsewhere. At
    level 1.5 unit and concept agree everywhere (IQR 1); at 0.5 they agree on 90 pixels."""
    values = np.array([[2.0] * 10 + [1.0] * 10 + [0.0] * 80])
    levels = np.sort(np.full((1, iqr.LEVELS), 3.0).ravel())[None].astype(np.float32)
    levels[0, :2] = [0.5, 1.5]
    k = np.searchsorted(levels[0], values[0])  # levels a pixel exceeds
    concept = np.array([1] * 10 + [0] * 90)
    counts = np.zeros((1, 2, iqr.LEVELS + 1), np.int64)
    np.add.at(counts[0, 0], k, 1)
    np.add.at(counts[0, 1], k[concept == 1], 1)
    assert iqr.thresholds_of(counts, np.array([10]), 100, levels)[0] == 1.5


def test_a_second_run_reuses_the_sample_and_another_sampler_makes_a_new_one(tmp_path, ray_local):
    job = generator_job(tmp_path, generator_toml(count=16, interventions=False))
    first = run_cli(job)
    sample = json.loads((first.catalog / "manifest.json").read_text())["prepared"]["generated_sample"]
    assert not sample["reused"] and (Path(sample["path"]) / "sample" / "000015.png").exists()
    assert np.array_equal(np.load(Path(sample["path"]) / "latents.npy"),
                          sample_latents(LatentsConfig(count=16, shape=(12,))))
    again = json.loads((run_cli(job).catalog / "manifest.json").read_text())["prepared"]["generated_sample"]
    assert again["reused"] and again["fingerprint"] == sample["fingerprint"]
    job.write_text(job.read_text().replace("count = 16", "count = 20"))
    other = json.loads((run_cli(job).catalog / "manifest.json").read_text())["prepared"]["generated_sample"]
    assert not other["reused"] and other["images"] == 20
    assert np.array_equal(np.load(Path(other["path"]) / "latents.npy")[:16], sample_latents(LatentsConfig(count=16, shape=(12,))))


def test_the_same_job_gives_the_same_catalog_whatever_the_shards_and_workers(tmp_path, planted, ray_local):
    run = run_cli(generator_job(tmp_path, generator_toml(shard=8, workers=2, featvis=True)))
    a, b = Catalog.open(planted.catalog), Catalog.open(run.catalog)
    for table in ("units", "examples", "dissection", "generator_interventions"):
        left, right = a.table(table), b.table(table)
        assert left.drop(columns=[c for c in left.columns if "time" in c]).equals(
            right.drop(columns=[c for c in right.columns if "time" in c])), table
    assert np.array_equal(a.intervention_strip("layout", "red"), b.intervention_strip("layout", "red"))
    assert np.array_equal(a.featvis("coarse", None), b.featvis("coarse", None))


def test_featvis_optimizes_the_latent_past_every_sampled_one(planted):
    """The coarse layer's 58 filler units are rectified linear functions of the latent: on the featvis objective
    (mean rectified activation + 0.1 x mean activation), the optimized latent beats every sampled latent at the
    sampler's scale (mean square <= 1, the region its prior keeps to). The images are the generator's drawings."""
    catalog = Catalog.open(planted.catalog)
    units = catalog.units().set_index(["layer", "unit"]).loc["coarse"]
    z = torch.from_numpy(np.load(Path(catalog.manifest["prepared"]["generated_sample"]["path"]) / "latents.npy"))
    z = z[z.pow(2).mean(dim=1) <= 1]
    with torch.no_grad():
        acts = PlantedLayout().coarse(z).flatten(2)  # [N, 64, 64 positions]
    sampled = (acts.clamp(min=0).mean(dim=2) + 0.1 * acts.mean(dim=2)).amax(dim=0).numpy()
    reached = units["featvis_activation"].to_numpy()
    assert len(z) >= 20 and (reached[6:] >= sampled[6:] - 1e-6).mean() >= 0.95
    assert np.median(reached[6:] / sampled[6:]) > 1.2
    views = catalog.featvis("coarse", 0)
    assert views.shape == (2, 16, 16, 3)
    assert not catalog.has_array("projections", "coarse") and catalog.manifest["featvis"]["views"] == ["positive", "negative"]


def test_the_palette_segmenter_gives_the_concept_world_s_colour_masks_exactly(tmp_path):
    from pipeline.concepts.vocabulary import CATEGORY_LABELS
    from pipeline.concepts.world import draw_image

    seg = PaletteSegmenter()
    for index in range(6):
        drawing = draw_image(index, 64, 0)
        with torch.no_grad():
            labels = seg(torch.from_numpy(drawing.rgb).permute(2, 0, 1)[None].float() / 255)[0].numpy()
        names = [n for n, _ in seg.labels]
        expected = np.array([0] + [names.index(c) + 1 for c in CATEGORY_LABELS["color"]])[drawing.maps["color"]]
        assert np.array_equal(labels, expected)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("[latents]", "[data]\nimages = 'x'\n[latents]"), "[latents] makes the model a generator"),
    (lambda t: t.replace("distribution", "x").replace("shape = [12]", "shape = [12]\ndistribution = 'cauchy'"),
     "'latents.distribution' must be 'normal' or 'uniform', got 'cauchy'"),
    (lambda t: t.replace("[ray]", "[stages.shapley]\n[ray]"),
     "stage(s) 'shapley' cannot run on a generator ([latents]): shapley: its metric is a classifier's accuracy"),
    (lambda t: t.replace("pipeline.generators.palette:palette_segmenter", "generators.py:planted_layout"),
     "generators.py:planted_layout: the module needs `labels`, a list of (concept name, category)"),
    (lambda t: t.replace("shape = [12]", "shape = [7]"), "the generator failed on latents of shape (8, 7): IndexError"),
    (lambda t: t.replace('layers = ["layout"]', 'layers = ["nowhere"]'),
     "'stages.interventions.layers' names ['nowhere'], which are not cataloged layers"),
    (lambda t: t.replace("shape = [12]", "shape = [12]\nfolder = 'catalog/sample'"), "holds the data set data.images"),
    (lambda t: t.replace('segmenter = "pipeline.generators.palette:palette_segmenter"', ""),
     "stage 'dissection' needs [concepts] segmenter = a segmenter of the generated images"),
    (lambda t: t.replace("shape = [12]", "shape = [12]\nfolder = 'notes/todo.txt'"), "is a file; point it at a folder"),
    (lambda t: t.replace("shape = [12]", "shape = [12]\nfolder = 'notes'"),
     "exists and holds no generated sample (no readable sample.json)"),
])
def test_bad_generator_jobs_exit_2_naming_the_key(tmp_path, capsys, edit, expected, ray_local):
    job = generator_job(tmp_path, edit(generator_toml(count=8)))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("a folder of the user's, not a sample")
    code = main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "catalog" / "manifest.json").exists()
    assert (tmp_path / "notes" / "todo.txt").exists()


def test_a_segmenter_breaking_the_contract_is_refused_not_read():
    from pipeline.errors import UserError
    from pipeline.generators.segmenter import segment

    pixels = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(UserError, match=r"returned torch.float32 \(2, 8, 8\) for 2 images: it must return integer"):
        segment(lambda x: x[:, 0], pixels, 4)
    with pytest.raises(UserError, match=r"returned label numbers 9..9; they must lie in 0..4"):
        segment(lambda x: torch.full((2, 8, 8), 9), pixels, 4)
    assert segment(lambda x: torch.ones((2, 8, 8), dtype=torch.int64), pixels, 4).shape == (2, 1, 8, 8)


def test_the_interventions_stage_refuses_a_classifier(tmp_path, capsys, ray_local):
    from conftest import dissection_job

    job, _ = dissection_job(tmp_path)
    job.write_text(job.read_text().replace("[ray]", "[stages.interventions]\n[ray]"))
    assert main(["run", str(job)]) == 2
    assert "stage 'interventions' edits a generator's units" in capsys.readouterr().err


def test_the_site_shows_the_curves_and_strips_on_concept_and_unit_pages(planted, tmp_path, browser):
    site = tmp_path / "site"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["render", str(planted.catalog), "--out", str(site)]) == 0
    index = (site / "index.html").read_text()
    assert 'href="concepts/layout/red.html"' in index
    page = (site / "concepts" / "layout" / "red.html").read_text()
    assert "removes <strong>100%</strong>" in page and 'class="top"' in page and 'class="random"' in page
    errors, broken = check_page(browser, (site / "concepts" / "layout" / "red.html").as_uri())
    assert not errors and not broken
    unit = (site / "units" / "layout" / "0.html").read_text()
    assert 'id="interventions"' in unit and "concepts/layout/red-0-ablated.png" in unit
    errors, broken = check_page(browser, (site / "units" / "layout" / "0.html").as_uri())
    assert not errors and not broken


def test_the_iqr_rule_refuses_a_concept_set_of_several_mask_sizes(tmp_path):
    from pipeline.errors import UserError
    from pipeline.inputs.broden import Broden, ConceptImage

    images = tuple(ConceptImage(i + 1, f"{i}.png", "train", (16, 16), (8 * (1 + i % 2), 8), {}, {}) for i in range(4))
    with pytest.raises(UserError, match=r"needs one mask size .* has 2: \[\(8, 8\), \(16, 8\)\]"):
        iqr.check_mask_sizes(Broden(tmp_path, ("color",), {}, images))
