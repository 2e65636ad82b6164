"""Shared fixtures: one small local Ray for the whole session, tiny image folders, job files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASSETS = Path(__file__).parent / "assets"
RED_IMAGE = 7  # image id of the one image with a pure red pixel
RED_YX = (9, 13)


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", address="local")
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


def write_job(folder: Path, text: str, factory: str = "tiny_models.py") -> Path:
    """A job file in `folder` beside a copy of the test models."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / factory, folder / factory)
    job = folder / "job.toml"
    job.write_text(text)
    return job


PLANTED_JOB = """
seed = 0
[model]
factory = "tiny_models.py:planted"
layers = ["conv1", "conv2", "fc"]
input_size = 32
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
[data]
images = "images"
batch_size = {batch}
[stages.activations]
k = 4
patch_size = 16
[ray]
workers = {workers}
shard_images = {shard}
[output]
catalog = "catalog"
"""


def planted_job(folder: Path, batch: int = 4, workers: int = 1, shard: int = 8, images: int = 24) -> Path:
    if not (folder / "images").exists():
        make_images(folder / "images", count=images)
    return write_job(folder, PLANTED_JOB.format(batch=batch, workers=workers, shard=shard))


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
