"""Objectives for feature visualization: per image, a value to maximize. They compose like Lucent's:
`channel() + 0.5 * diversity()`, `-channel()` (inhibit), `2 * neuron()`. The inhibiting image of an
objective maximizes its `inhibit` (minus the objective, or the objective's own inverse).

An objective reads a `Context`: the target layer's output for the batch, the unit each image
renders, the model's output (for class objectives) and each image's group (the images of one
unit rendered together for diversity)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Context:
    acts: torch.Tensor  # [N, C, H, W] or [N, C]: the target layer's output
    units: torch.Tensor  # int64 [N]: the unit each image renders
    groups: torch.Tensor  # int64 [N]: images with the same group are one unit's diverse set
    output: torch.Tensor | None = None  # [N, classes]: the model's output, for class objectives


class Objective:
    """A per-image value to maximize; `needs_output` when it reads the model's final output. `inhibit` is the value
    that the inhibiting (negative) image maximizes: minus the objective, unless `inverse` says otherwise."""

    def __init__(self, fn: Callable[[Context], torch.Tensor], name: str, needs_output: bool = False,
                 inverse: Callable[[Context], torch.Tensor] | None = None):
        self.fn, self.name, self.needs_output = fn, name, needs_output
        self.inverse = inverse or (lambda c: -fn(c))

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def inhibit(self, ctx: Context) -> torch.Tensor:
        return self.inverse(ctx)

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda c: self(c) + other(c), f"{self.name} + {other.name}", self.needs_output or other.needs_output,
                         lambda c: self.inhibit(c) + other.inhibit(c))

    def __mul__(self, k: float) -> Objective:
        if k < 0:
            return -(self * -k)
        return Objective(lambda c: k * self(c), f"{k} * {self.name}", self.needs_output, lambda c: k * self.inhibit(c))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Objective(self.inverse, f"-{self.name}", self.needs_output, self.fn)


def _own(ctx: Context) -> torch.Tensor:
    """Each image's own unit: [N, H, W] (or [N])."""
    return ctx.acts[torch.arange(len(ctx.units), device=ctx.acts.device), ctx.units]


def channel() -> Objective:
    """The unit's mean activation over positions (for [N, C] layers: the activation)."""
    return Objective(lambda c: _own(c).reshape(len(c.units), -1).mean(dim=1), "channel")


def rectified(slope: float = 0.1) -> Objective:
    """The unit's mean rectified activation over positions, plus `slope` times its mean: what a following ReLU
    passes on. On a pre-ReLU layer Lucid's plain mean is dominated by where a sparse unit is negative, so its
    image makes the unit less negative everywhere instead of firing; the slope keeps a gradient where it does not
    fire yet. The inhibiting image maximizes the same on minus the activation."""
    def on(c: Context, sign: float) -> torch.Tensor:
        a = sign * _own(c).reshape(len(c.units), -1)
        return a.clamp(min=0).mean(dim=1) + slope * a.mean(dim=1)
    return Objective(lambda c: on(c, 1.0), "rectified", inverse=lambda c: on(c, -1.0))


def neuron() -> Objective:
    """The unit's activation at the centre position."""
    def fn(c: Context) -> torch.Tensor:
        a = _own(c)
        return a if a.dim() == 1 else a[:, a.shape[1] // 2, a.shape[2] // 2]
    return Objective(fn, "neuron")


def layer() -> Objective:
    """DeepDream: the mean squared output of the whole layer."""
    return Objective(lambda c: c.acts.reshape(len(c.units), -1).pow(2).mean(dim=1), "layer")


def class_logit() -> Objective:
    """The model's output for the class numbered like the unit (render the output layer's units)."""
    return Objective(lambda c: c.output[torch.arange(len(c.units)), c.units], "class_logit", needs_output=True)


def class_prob() -> Objective:
    return Objective(lambda c: F.softmax(c.output, dim=1)[torch.arange(len(c.units)), c.units], "class_prob",
                     needs_output=True)


def direction(vector: torch.Tensor) -> Objective:
    """Alignment of the layer's output with a direction over channels, averaged over positions."""
    def fn(c: Context) -> torch.Tensor:
        v = vector.to(c.acts.device, c.acts.dtype)
        a = c.acts if c.acts.dim() == 4 else c.acts[:, :, None, None]
        return (a * v[None, :, None, None]).sum(dim=1).reshape(len(c.units), -1).mean(dim=1)
    return Objective(fn, "direction")


def diversity() -> Objective:
    """Minus the mean cosine similarity of an image's Gram matrix with those of its group's other images."""
    def fn(c: Context) -> torch.Tensor:
        a = c.acts if c.acts.dim() == 4 else c.acts[:, :, None, None]
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        grams = F.normalize((flat @ flat.transpose(1, 2)).reshape(a.shape[0], -1), dim=1)
        same = (c.groups[:, None] == c.groups[None, :]) & ~torch.eye(len(c.groups), dtype=torch.bool, device=a.device)
        sims = (grams @ grams.T) * same
        return -sims.sum(dim=1) / same.sum(dim=1).clamp(min=1)
    return Objective(fn, "diversity")


NAMED = {"rectified": rectified, "channel": channel, "neuron": neuron, "layer": layer, "class_logit": class_logit, "class_prob": class_prob}
