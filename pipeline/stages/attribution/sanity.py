"""The model-randomization sanity check (Adebayo et al., NeurIPS 2018): an attribution method whose maps barely change
when the model's weights are re-initialized explains the input, not the model. Every parameterized module is
re-initialized (the full cascade from the unit down to the input: what lies after a unit does not reach it), the
maps are made again on the same examples, and the Spearman rank correlation of the two maps' magnitudes is
averaged per layer and method; a method passes below MAX_CORRELATION."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

MAX_CORRELATION = 0.5  # mean rank correlation with the randomized model's maps at which a method fails


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of the model with every module that can (reset_parameters) re-initialized, seeded."""
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in copied.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
    return copied.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' magnitudes (0 when either is constant)."""
    from scipy.stats import spearmanr  # half a second to import: only where the check runs (the actors)

    x, y = np.abs(a).ravel(), np.abs(b).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)
