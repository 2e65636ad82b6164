"""Changing a shared model for a while, and putting it back: ReLU backward rules, frozen parameters (featvis, projections)."""

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


_NOT_RELU = (nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.Sigmoid,
             nn.Tanh, nn.Hardsigmoid, nn.Softmax, nn.MultiheadAttention, nn.LayerNorm)


def projection_caveat(model: nn.Module) -> str | None:
    """None for a ReLU network; else what the deconvnet and guided-backprop maps are on this model (they are defined
    for ReLUs only: every other operation passes the plain gradient)."""
    found = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NOT_RELU)})
    if not found:
        return None
    return (f"This model computes with {', '.join(found)}: the deconvnet and guided backpropagation are defined for "
            "ReLU networks, and here only its nn.ReLU modules apply their rule while everything else passes the plain "
            "gradient; read these maps as (partly rectified) gradients, not as the methods' reconstructions.")


@contextmanager
def parameters_frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of the model needs a gradient inside the block (only the input image is optimized);
    each gets its own requires_grad back after it, since the worker's model is shared by every stage."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
