"""The featvis stage: activation maximization for many units of one layer in one batch.

Each image renders one unit (positive, negative, or one of its diverse set), with parameters and
random transforms drawn from its own generator seeded by (seed, layer, unit, view). The model runs
only up to the target layer, the batch always has the same size (padded with spare copies), and
every per-image computation is independent of the others, so a unit's images do not depend on
which units share its batch. For the first steps ReLUs pass a redirected gradient (as Lucid), so
that units which never fire still get one. Adam's learning rate warms up, then decays (`lr_factor`), and the
last `polish` steps optimize the image as it is stored, without transforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.inputs.models import LayerInfo
from pipeline.stages.featvis import objectives as obj
from pipeline.stages.featvis.param import ImageParam, init_params
from pipeline.stages.featvis.transforms import Transforms
from pipeline.stages.featvis.truncate import LayerForward
from pipeline.stages.featvis.relu_rules import parameters_frozen, relus_replaced
from pipeline.stages.featvis.settings import FeatvisSettings


@dataclass
class FeatvisChunk:
    """Rendered units of one layer: uint8 images [n, V, S, S, 3]; for the positive image, evaluated
    as stored with no transform, the objective and the unit's largest value; whether it stayed flat."""

    layer: str
    units: np.ndarray
    images: np.ndarray
    objective: np.ndarray
    peak: np.ndarray
    flat: np.ndarray


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where the true one is zero everywhere, still lets through
    the components that would raise a negative input (Lucid's redirected ReLU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        negative = x < 0
        through = (grad != 0).logical_and_(~negative).flatten(1).any(dim=1)  # the true ReLU gradient is not all zero
        # an image whose true gradient is not all zero gets it (zero where x < 0); any other keeps every component
        # but those that would push a negative x lower still (grad > 0)
        blocked = negative.logical_and_((grad > 0).logical_or_(through.reshape(-1, *([1] * (grad.dim() - 1)))))
        return grad.masked_fill(blocked, 0.0)


def fast_layout(forward: Callable[[torch.Tensor], object], x: torch.Tensor) -> torch.memory_format:
    """channels_last (convolutions and max pooling run about twice as fast in it on a CPU, and it suits cuDNN),
    unless the model's code cannot take it (a `.view` of a feature map): then the default layout."""
    if x.dim() != 4:
        return torch.contiguous_format
    try:
        with torch.no_grad():
            forward(x.contiguous(memory_format=torch.channels_last))  # not x[:1]: a
            # single image's channels_last strides are also contiguous ones, and would pass
    except RuntimeError:
        return torch.contiguous_format
    return torch.channels_last


def _frequency_penalty(images: torch.Tensor, settings: FeatvisSettings) -> torch.Tensor:
    """Per image: tv * total variation + blur * squared distance to its 3x3-blurred self (held fixed)."""
    penalty = torch.zeros(len(images), device=images.device)
    if settings.tv:
        dy = (images[:, :, 1:] - images[:, :, :-1]).abs().mean(dim=(1, 2, 3))
        dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
        penalty = penalty + settings.tv * (dy + dx)
    if settings.blur:
        kernel = torch.full((images.shape[1], 1, 3, 3), 1 / 9, device=images.device)
        blurred = torch.nn.functional.conv2d(images, kernel, padding=1, groups=images.shape[1]).detach()
        penalty = penalty + settings.blur * (images - blurred).pow(2).mean(dim=(1, 2, 3))
    return penalty


def lr_factor(settings: FeatvisSettings) -> Callable[[int], float]:
    """The learning rate's multiplier at each step: constant (Lucid), or a linear warm-up then a cosine decay."""
    warm = max(1, round(settings.warmup * settings.steps))

    def factor(step: int) -> float:
        if settings.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, settings.steps - warm)
        return settings.final_lr + (1 - settings.final_lr) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def _fitted(x: torch.Tensor, size: int) -> torch.Tensor:
    """The images at the model's fixed input size (`size`; 0: any size goes), resized bilinearly."""
    if not size or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _objective(settings: FeatvisSettings) -> obj.Objective:
    return obj.NAMED[settings.objective]()


def visualize(model: nn.Module, layer: str, layer_index: int, units: list[int], settings: FeatvisSettings, seed: int,
           device: str = "cpu", batch: int | None = None, info: LayerInfo | None = None) -> FeatvisChunk:
    """Every view of every unit in `units`, in batches of `batch` whole units (default: as many as `batch_units`
    images hold); a short batch is padded to that size. `info` tells where the layer keeps its units (default:
    axis 1); the objectives read its patch grid, units first, never a token layer's prefix tokens."""
    views = settings.views()
    per_batch = batch or max(1, settings.batch_units // len(views))
    parts = []
    with parameters_frozen(model):
        for start in range(0, len(units), per_batch):
            real = list(units[start:start + per_batch])
            padded = real + [real[-1]] * (per_batch - len(real))  # a fixed batch size keeps results batch-independent
            parts.append([a[:len(real)] for a in _optimize(model, layer, layer_index, padded, views, settings, seed, device,
                                                           info)])
    return FeatvisChunk(layer, np.asarray(units), *(np.concatenate(column) for column in zip(*parts)))


def _optimize(model: nn.Module, layer: str, layer_index: int, units: list[int], views: list[tuple[str, int]],
              settings: FeatvisSettings, seed: int, device: str,
              info: LayerInfo | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    channels, size = len(settings.mean), settings.size
    jobs = [(u, v) for u in units for v in range(len(views))]
    rngs = [np.random.default_rng([seed, layer_index, u, v]) for u, v in jobs]
    params = torch.tensor(np.stack([init_params(settings.param, channels, size, r) for r in rngs]),
                          device=device, requires_grad=True)
    opt = torch.optim.Adam([params], lr=settings.lr)
    transforms = Transforms.named(settings.transforms)
    objective = _objective(settings)
    kinds = [views[v][0] for _, v in jobs]
    sign = torch.tensor([-1.0 if k == "negative" else 1.0 for k in kinds], device=device)
    diverse = torch.tensor([k == "diverse" for k in kinds], device=device)
    ctx_units = torch.tensor([u for u, _ in jobs], device=device)
    # a unit's diverse images form one group, by the unit's place in this batch (a spare copy is its own group)
    groups = torch.tensor([i if k != "diverse" else -1 - i // len(views) for i, k in enumerate(kinds)], device=device)
    mean = torch.tensor(settings.mean, device=device)[None, :, None, None]
    std = torch.tensor(settings.std, device=device)[None, :, None, None]
    image = ImageParam(settings.param, size, channels, settings.param == "fourier", settings.chroma, device)
    forward = LayerForward(model, layer, objective.needs_output, info)
    with torch.no_grad():
        layout = fast_layout(forward, _fitted(image(params), settings.input_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(settings))
    for step in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        x = image(params)
        polish = step >= settings.steps - settings.polish
        if transforms is not None and not polish:
            x = transforms.apply(x, [transforms.draw(r) for r in rngs])
        with relus_replaced(forward.relu_owner(), _RedirectedReLU.apply if step < settings.redirect_steps else None):
            acts, output = forward(((_fitted(x, settings.input_size) - mean) / std).contiguous(memory_format=layout))
        ctx = obj.Context(acts, ctx_units, groups, output)
        value = torch.where(sign < 0, objective.inhibit(ctx), objective(ctx))
        if settings.diversity > 1:
            value = value + settings.diversity_weight * torch.where(diverse, obj.diversity()(ctx), torch.zeros_like(value))
        if settings.tv or settings.blur:
            value = value - _frequency_penalty(image(params), settings)
        (-value.sum()).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        final = image(params)
        pixels = (final * 255).round().clamp(0, 255).to(torch.uint8)
        fitted = _fitted(pixels.float() / 255, settings.input_size)
        acts, output = forward(((fitted - mean) / std).contiguous(memory_format=layout))
        reached = objective(obj.Context(acts, ctx_units, groups, output)).reshape(len(units), len(views))[:, 0]
        own = acts[torch.arange(len(jobs)), ctx_units].reshape(len(jobs), -1).amax(dim=1)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    if channels == 1:
        pixels = pixels.repeat(3, axis=-1)
    elif channels > 3:
        pixels = pixels[..., :3]  # the first three input channels, shown as RGB
    per_unit = pixels.reshape(len(units), len(views), size, size, 3)
    positive = per_unit[:, 0].astype(np.float32) / 255
    flat = positive.reshape(len(units), -1).std(axis=1) < settings.flat_std
    return per_unit, reached.cpu().numpy(), own.reshape(len(units), len(views))[:, 0].cpu().numpy(), flat
