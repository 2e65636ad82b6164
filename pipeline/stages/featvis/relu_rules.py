"""Swapping the backward rule of a model's ReLUs for a while (featvis, projections)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def relus_replaced(model: nn.Module, relu: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[None]:
    """Every nn.ReLU module of the model computes with `relu` (an autograd Function's apply) inside the
    block; None leaves them as they are. Functional relu calls are not affected."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if relu is not None else []
    for m in relus:
        m.forward = relu
    try:
        yield
    finally:
        for m in relus:
            del m.forward
