"""The latent sampler of a generator job ([latents]): row i of the sample from its own seeded generator, so the
first rows are the same whatever the count, and a worker can draw any row it needs."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.job.config import LatentsConfig

LATENTS_FILE = "latents.npy"  # float32 [count, *shape], in the sample folder


def sample_latents(cfg: LatentsConfig, start: int = 0, stop: int | None = None) -> np.ndarray:
    """float32 [stop - start, *shape]: rows start..stop of the job's latents."""
    rows = range(start, cfg.count if stop is None else stop)
    draw = {"normal": lambda g: g.standard_normal(cfg.shape), "uniform": lambda g: g.uniform(-1.0, 1.0, cfg.shape)}
    return np.stack([draw[cfg.distribution](np.random.default_rng([cfg.seed, i])) for i in rows]).astype(np.float32)


@lru_cache(maxsize=4)
def _opened(path: str, version: tuple[int, int]) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _latents(path: str) -> np.ndarray:
    """The file mapped once per process, and again when a new sample replaced it (actors outlive runs)."""
    stat = os.stat(path)
    return _opened(path, (stat.st_ino, stat.st_mtime_ns))


def latent_inputs(path: str, names: list[str], device: str = "cpu") -> torch.Tensor:
    """The latents of the generated images `names` (file names NNNNNN.png: their stem is the latent's row)."""
    rows = [int(Path(name).stem) for name in names]
    return torch.from_numpy(np.ascontiguousarray(_latents(path)[rows])).to(device)
