"""Shared fixtures: one small local Ray for the whole session, tiny image folders, job files, and the
catalogs several modules read (each made once per session)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_broden import write_mini_broden

ASSETS = Path(__file__).parent / "assets"
RED_IMAGE = 7  # image id of the one image with a pure red pixel
RED_YX = (9, 13)


@pytest.fixture(scope="session")
def ray_local():
    """The session's Ray: in-process runs reuse it (`ray_session`) and hand their model actors on to the
    next run (`keep_workers`). Tests that kill or signal a run, or need a cluster of their own, run it in
    a subprocess instead."""
    ray = pytest.importorskip("ray")
    from pipeline.runner import keep_workers

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", address="local")
    with keep_workers():
        yield ray
    ray.shutdown()


def make_images(root: Path, count: int = 24, size: int = 32, classes: tuple[str, ...] = ("a", "b"), seed: int = 0) -> list[Path]:
    """Gray-noise PNGs in class folders (round robin); image RED_IMAGE gets one pure red pixel at RED_YX."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        cls = classes[i % len(classes)] if classes else ""
        names.append((f"{cls}/img_{i:03d}.png" if cls else f"img_{i:03d}.png"))
    names.sort()
    paths = []
    for image_id, name in enumerate(names):
        pixels = rng.integers(100, 156, size=(size, size, 3), dtype=np.uint8)
        if image_id == RED_IMAGE:
            pixels[RED_YX] = (255, 0, 0)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


# --- job files -----------------------------------------------------------------------------------------------

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _table(name: str, keys: dict) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in keys.items() if value is not None)


def job_toml(factory: str, layers: list[str], *, norm: tuple[float, float] = (0.0, 1.0), input_size: int = 32,
             batch: int = 4, broden: str | None = None, categories: list[str] | None = None, k: int = 4, patch: int = 16, activations: dict | None = None,
             featvis: dict | None = None, dissection: dict | None = None, shapley: dict | None = None,
             similarity: dict | None = None, connections: dict | None = None, maps: dict | None = None,
             more: dict[str, dict] | None = None, workers: int = 1, shard: int | None = None, catalog: str = "catalog", output: dict | None = None,
             top: dict | None = None, **model) -> str:
    """A job file's text, seed 0: `factory` names a function of tests/assets/tiny_models.py, `norm` is the
    (mean, std) of every channel, `model` holds more [model] keys (weights = ...), `top` more top-level keys
    (previous = ...), `output` more [output] keys, `maps` the [stages.unit_map] keys, `more` other stages' sections by
    name. A stage's table is written when its settings are given (an empty dict: its defaults); data.images is "images". Keys whose value is None are left out."""
    mean, std = norm
    top = {"seed": 0, **(top or {})}
    parts = ["\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in top.items() if value is not None),
             _table("model", {"factory": f"tiny_models.py:{factory}", **model, "layers": layers, "input_size": input_size,
                              "mean": [float(mean)] * 3, "std": [float(std)] * 3}),
             _table("data", {"images": "images", "batch_size": batch})]
    if broden is not None:
        parts.append(_table("concepts", {"broden": broden, "categories": categories}))
    parts.append(_table("stages.activations", {"k": k, "patch_size": patch, **(activations or {})}))
    for name, settings in (("featvis", featvis), ("dissection", dissection), ("shapley", shapley),
                           ("similarity", similarity), ("connections", connections), ("unit_map", maps),
                           *(more or {}).items()):
        if settings is not None:
            parts.append(_table(f"stages.{name}", settings))
    parts.append(_table("ray", {"workers": workers, "shard_images": shard}))
    parts.append(_table("output", {"catalog": catalog, **(output or {})}))
    return "".join(parts)


def write_job(folder: Path, text: str, factory: str = "tiny_models.py") -> Path:
    """A job file in `folder` beside a copy of the test models."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / factory, folder / factory)
    job = folder / "job.toml"
    job.write_text(text)
    return job


PLANTED_LAYERS = ["conv1", "conv2", "fc"]


def planted_toml(batch: int = 4, workers: int = 1, shard: int = 8) -> str:
    """tests/assets/tiny_models.py:planted (its conv1 unit 0 fires on pure red) on 32 px images, activations only."""
    return job_toml("planted", PLANTED_LAYERS, batch=batch, workers=workers, shard=shard)


def planted_job(folder: Path, batch: int = 4, workers: int = 1, shard: int = 8, images: int = 24) -> Path:
    if not (folder / "images").exists():
        make_images(folder / "images", count=images)
    return write_job(folder, planted_toml(batch, workers, shard))


def dissection_toml(batch: int = 2, workers: int = 1, shard: int = 64, **keys) -> str:
    """tests/assets/tiny_models.py:color_detectors (relu units 0, 1, 2 fire on red, blue, green) and the mini
    Broden, activations and dissection; `keys`: more job_toml arguments.

    resize = "bilinear": the 32 px maps sample the 16 px masks' 2x2 blocks, so the planted detectors'
    IoUs are exact by hand (Pillow's antialiased default blurs the block edges: test_netdissect_rules)."""
    return job_toml("color_detectors", ["relu"], **{"norm": (0.5, 0.5), "batch": batch, "broden": "broden", "k": 2,
                                                    "patch": 8, "dissection": {"quantile": 0.5, "resize": "bilinear"},
                                                    "workers": workers,
                                                    "shard": shard, **keys})


def dissection_job(folder: Path, batch: int = 2, workers: int = 1, shard: int = 64, images: int = 12):
    """dissection_toml's job on a mini Broden of `images` images, also copied to images/: (job, the MiniBroden)."""
    world = write_mini_broden(folder / "broden", images=images)
    (folder / "images").mkdir(exist_ok=True)
    for i in range(images):
        shutil.copy(folder / "broden" / "images" / f"{i:03d}.png", folder / "images" / f"{i:03d}.png")
    return write_job(folder, dissection_toml(batch, workers, shard)), world


# Every stage, small: the planted model on 16 images and an 8-image mini Broden (test_interruptions, test_node_failures).
ALL_STAGES = dict(
    featvis={"steps": 8, "size": 16, "batch_units": 2},
    dissection={"quantile": 0.2},
    shapley={"layers": ["conv2"], "eval_images": 12, "top_k": 2, "rounds": 6, "permutations_per_round": 2, "bandit": False},
)


def all_stages_job(folder: Path, patch: int = 8, workers: int = 1) -> Path:
    if not (folder / "images").exists():
        make_images(folder / "images", count=16)
        write_mini_broden(folder / "broden", images=8)
    return write_job(folder, job_toml("planted", PLANTED_LAYERS, batch=2, broden="broden", k=3, patch=patch,
                                      workers=workers, shard=2, **ALL_STAGES))


# --- catalogs made once per session ----------------------------------------------------------------------------

@dataclass
class Run:
    catalog: Path
    out: str  # what `neuron-catalog run` printed


def run_cli(job: Path) -> Run:
    """`neuron-catalog run JOB` in this process (the session's Ray); fails unless it exits 0."""
    from pipeline.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(job)])
    assert code == 0, out.getvalue()
    return Run(job.parent / "catalog", out.getvalue())


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory, ray_local) -> Run:
    """The planted model's activations catalog, in one shard (test_run_end_to_end, test_render): read only."""
    return run_cli(planted_job(tmp_path_factory.mktemp("planted"), shard=1000))


@pytest.fixture(scope="session")
def undisturbed(tmp_path_factory, ray_local) -> Path:
    """all_stages_job's catalog, run without interruption: what every interrupted run must come back to."""
    return run_cli(all_stages_job(tmp_path_factory.mktemp("undisturbed"))).catalog


# --- the rendered site in a real headless Chromium (Debian's chromium, driven by Playwright) ---------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run installs it)")


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by `pip install -e .[test]`")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--allow-file-access-from-files"])
        yield b
        b.close()


def check_page(browser, url: str) -> tuple[list[str], list[str]]:
    """(console errors and page errors, images that did not load) of one page."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    page.close()
    return errors, broken


# --- runs in a subprocess ----------------------------------------------------------------------------------------

def kill_run_when(job: Path, checkpoints: str, count: int, timeout: float = 180) -> None:
    """Run the job in a subprocess and SIGKILL its whole process group once `count` files match the
    glob `checkpoints` (under the catalog's .work directory); fails if the run ends first."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = job.parent / "catalog" / ".work"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and len(list(work.glob(checkpoints))) < count:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
