"""How good a dictionary is, as the SAE literature reports it: explained variance, mean L0, dead and dense
features, the firing-frequency histogram, and stability (two seeds' decoders matched one-to-one by cosine)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipeline.inputs.features import Dictionary

DENSE = 0.1  # a feature firing on more than this share of the vectors is dense (it explains little by itself)
FREQUENCY_BINS = np.arange(-8, 1)  # log10 firing-frequency bin edges: 1e-8 .. 1


@dataclass
class QualityPartial:
    """Sufficient statistics over some vectors: mergeable across batches and shards."""

    vectors: int
    fired: np.ndarray  # int64 [F] vectors on which each feature is active
    active: int  # sum over vectors of their active features (L0)
    error: float  # sum of squared reconstruction errors
    total: np.ndarray  # float64 [C] sum of the vectors
    total_sq: float  # sum of their squared norms

    @classmethod
    def empty(cls, features: int, channels: int) -> QualityPartial:
        return cls(0, np.zeros(features, np.int64), 0, 0.0, np.zeros(channels), 0.0)

    def merged(self, o: QualityPartial) -> QualityPartial:
        return QualityPartial(self.vectors + o.vectors, self.fired + o.fired, self.active + o.active,
                              self.error + o.error, self.total + o.total, self.total_sq + o.total_sq)


def measure(dictionary: Dictionary, batches: Iterable[torch.Tensor], device: str = "cpu") -> QualityPartial:
    """The statistics of `dictionary` over vectors [B, C] (in the layer's own units)."""
    w = dictionary.tensors(device)
    acc = QualityPartial.empty(dictionary.features, dictionary.decoder.shape[1])
    with torch.inference_mode():
        for x in batches:
            x = x.to(device, torch.float32)
            z = w.encode(x)
            on = z > 0
            x64 = x.double()
            acc = acc.merged(QualityPartial(
                len(x), on.sum(dim=0).cpu().numpy().astype(np.int64), int(on.sum()),
                float((x - w.decode(z)).double().square().sum()), x64.sum(dim=0).cpu().numpy(),
                float(x64.square().sum())))
    return acc


def summary(q: QualityPartial) -> dict[str, float | list[int]]:
    """Explained variance (1 - error / variance about the mean vector), mean L0, dead and dense shares, and the
    count of features per log10 firing-frequency bin (dead features in none)."""
    n = max(q.vectors, 1)
    variance = q.total_sq - float(np.square(q.total).sum()) / n
    frequency = q.fired / n
    alive = frequency[frequency > 0]
    histogram = (np.histogram(np.log10(alive), bins=FREQUENCY_BINS)[0] if len(alive)
                 else np.zeros(len(FREQUENCY_BINS) - 1, int))
    return {"explained_variance": 1.0 - q.error / variance if variance > 0 else float("nan"),
            "mean_l0": q.active / n, "dead_fraction": float((q.fired == 0).mean()),
            "dense_fraction": float((frequency > DENSE).mean()), "firing_histogram": [int(c) for c in histogram]}


def matched_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two dictionaries' decoders [F, C] matched one-to-one (Hungarian, on |cosine|): each feature of `a`'s cosine
    with its match in `b`. Their mean is the dictionary's stability across seeds."""
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = na @ nb.T
    rows, cols = linear_sum_assignment(-cos)
    out = np.zeros(len(a))
    out[rows] = cos[rows, cols]
    return out
