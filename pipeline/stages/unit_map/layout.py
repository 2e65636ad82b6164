"""One layer's 2-D layout: PaCMAP on the units' vectors (PCA for a handful of units), seeded and repeatable.

The layout runs with one BLAS/OpenMP thread: PaCMAP's neighbour search and PCA give other bits with another number of
threads, and a layout must be byte-identical whatever machine or worker count reruns the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

MIN_PACMAP = 16  # fewer units than this are laid out by PCA: PaCMAP's neighbour pairs need a crowd


@dataclass(frozen=True)
class Layout:
    """Units' places in [0, 1]^2 (NaN for units without a vector: constant or dead units) and how they were found."""

    xy: np.ndarray  # float32 [units, 2]
    method: str  # "pacmap" | "pca" | "none" (fewer than 2 units with a vector)


def unit_layout(unit: np.ndarray, valid: np.ndarray, method: str, neighbors: int, seed: int) -> Layout:
    """Lay out the rows of `unit` (unit vectors: Euclidean distance follows correlation or cosine) where `valid`."""
    xy = np.full((len(unit), 2), np.nan, np.float32)
    rows = np.asarray(unit, np.float32)[valid]
    if len(rows) < 2:
        xy[valid] = 0.5
        return Layout(xy, "none")
    used = method if method == "pca" or len(rows) >= MIN_PACMAP else "pca"
    with threadpool_limits(limits=1):
        placed = _pacmap(rows, neighbors, seed) if used == "pacmap" else _pca(rows)
    xy[valid] = _unit_square(placed)
    return Layout(xy, used)


def _pacmap(rows: np.ndarray, neighbors: int, seed: int) -> np.ndarray:
    import pacmap  # numba-compiled on first use: imported by the actors that lay out, not by the driver

    logging.getLogger("pacmap").setLevel(logging.ERROR)  # it warns that a seed makes it run on one thread
    return pacmap.PaCMAP(n_components=2, n_neighbors=min(neighbors, len(rows) - 2), random_state=seed).fit_transform(rows)


def _pca(rows: np.ndarray) -> np.ndarray:
    """The first two principal components; each axis's sign fixed by its largest loading (SVD leaves it free)."""
    centred = rows.astype(np.float64) - rows.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((rows.shape[1], 2))
    for i in range(min(2, len(vt))):
        v = vt[i]
        axes[:, i] = v * np.sign(v[np.argmax(np.abs(v))])
    return centred @ axes


def _unit_square(points: np.ndarray) -> np.ndarray:
    """Shift and scale (one factor for both axes: the shape is kept) into [0, 1]^2, centred."""
    points = np.asarray(points, np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    span = float((high - low).max())
    if span <= 0:
        return np.full(points.shape, 0.5, np.float32)
    return ((points - (low + high) / 2) / span + 0.5).astype(np.float32)
