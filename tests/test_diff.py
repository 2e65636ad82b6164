"""`neuron-catalog diff` on planted changes: a permuted model (the same function, units reordered) is
matched back unit for unit, and a unit whose weights were negated is the one flagged as changed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ASSETS, PLANTED_LAYERS, check_page, job_toml, write_job
from pipeline.cli import main

sys.path.insert(0, str(ASSETS))
from tiny_models import planted  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_local")

PERM1 = [2, 0, 3, 1]  # new conv1 unit j is old unit PERM1[j]
PERM2 = [5, 3, 0, 1, 4, 2]


def _images(root: Path, count: int = 40) -> None:
    """Noise with colored rectangles, so units respond differently from image to image."""
    rng = np.random.default_rng(3)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // 2 + 64
        for _ in range(3):
            y, x, h, w = rng.integers(0, 24, 4)
            pixels[y:y + h // 2 + 4, x:x + w // 2 + 4] = rng.integers(0, 256, 3)
        path = root / ("a" if i % 2 else "b") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("diff")
    _images(folder / "images")
    sd = planted().state_dict()
    torch.save(sd, folder / "original.pt")
    permuted = dict(sd)
    permuted["conv1.weight"], permuted["conv1.bias"] = sd["conv1.weight"][PERM1], sd["conv1.bias"][PERM1]
    permuted["conv2.weight"] = sd["conv2.weight"][PERM2][:, PERM1]
    permuted["conv2.bias"] = sd["conv2.bias"][PERM2]
    permuted["fc.weight"] = sd["fc.weight"][:, PERM2]
    torch.save(permuted, folder / "permuted.pt")
    flipped = dict(sd)
    flipped["fc.weight"], flipped["fc.bias"] = sd["fc.weight"].clone(), sd["fc.bias"].clone()
    flipped["fc.weight"][1] *= -1
    flipped["fc.bias"][1] *= -1
    torch.save(flipped, folder / "flipped.pt")
    for weights in ("original", "permuted", "flipped"):
        job = write_job(folder, job_toml("planted", PLANTED_LAYERS, weights=f"{weights}.pt", norm=(0.5, 0.25), batch=8,
                                         patch=8, shard=16, catalog=weights))
        assert main(["run", str(job)]) == 0
    return folder


def _diff(world: Path, old: str, new: str, *flags: str) -> pd.DataFrame:
    out = world / f"{old}-{new}{''.join(flags)}.parquet"
    assert main(["diff", str(world / old), str(world / new), "--out", str(out), *flags]) == 0
    return pd.read_parquet(out)


def test_matching_recovers_the_permutation(world, capsys):
    diff = _diff(world, "original", "permuted", "--match", "correlation")
    for layer, perm in (("conv1", PERM1), ("conv2", PERM2), ("fc", [0, 1, 2])):
        rows = diff[diff["layer"] == layer].sort_values("unit")
        assert rows["unit"].tolist() == list(range(len(perm)))
        assert rows["old_unit"].tolist() == perm, layer
        assert (rows["match_score"] > 0.999).all() and (rows["matched_by"] == "correlation").all()
    assert not diff["changed"].any()
    assert (diff["top_jaccard"] == 1.0).all()  # the same top images once matched
    out = capsys.readouterr().out
    assert "0 of 13 units changed" in out


def test_matching_by_index_sees_the_permutation_as_change(world):
    diff = _diff(world, "original", "permuted", "--match", "index")
    conv1 = diff[diff["layer"] == "conv1"].set_index("unit")
    assert conv1["changed"].sum() >= 3  # only unit 3 kept nothing... every moved unit is flagged
    assert conv1.loc[[j for j, o in enumerate(PERM1) if o != j], "changed"].all()


def test_diff_flags_the_changed_unit_only(world, capsys):
    diff = _diff(world, "original", "flipped")
    assert (diff["matched_by"] == "index").all()  # auto keeps unit numbers: they still correlate
    flagged = diff[diff["changed"]]
    assert list(zip(flagged["layer"], flagged["unit"])) == [("fc", 1)]
    assert flagged["activation_corr"].iloc[0] == pytest.approx(-1.0, abs=1e-5)
    unchanged = diff[~diff["changed"]]
    assert (unchanged["activation_corr"] > 0.99999).all() and (unchanged["top_jaccard"] == 1.0).all()
    out = capsys.readouterr().out
    assert "1 of 13 units changed" in out and "fc" in out


def test_diff_of_a_missing_catalog_exits_2(world, capsys):
    assert main(["diff", str(world / "original"), str(world / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["diff", str(world / "original"), str(world / "flipped"), "--out", str(world / "images")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_render_with_diff_adds_a_page_of_the_changed_units(world, browser):
    site = world / "site"
    assert main(["render", str(world / "flipped"), "--out", str(site), "--diff", str(world / "original")]) == 0
    assert 'href="diff.html"' in (site / "index.html").read_text()
    errors, broken = check_page(browser, (site / "diff.html").as_uri())
    assert errors == [] and broken == []
    page = browser.new_page()
    page.goto((site / "diff.html").as_uri())
    changed = page.eval_on_selector_all("table.diff tr.changed", "rows => rows.map(r => r.cells[0].innerText + ':' + r.cells[1].innerText)")
    link = page.get_attribute("table.diff tr.changed a", "href")
    page.close()
    assert changed == ["fc:1"] and (site / link).is_file()
    # the same page from a `diff --out` file
    table = world / "for-render.parquet"
    assert main(["diff", str(world / "original"), str(world / "flipped"), "--out", str(table)]) == 0
    assert main(["render", str(world / "flipped"), "--out", str(site), "--diff", str(table)]) == 0
    html = (site / "diff.html").read_text()
    assert "for-render.parquet" in html and ">nan<" not in html and ">None<" not in html
