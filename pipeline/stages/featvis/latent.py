"""Feature visualization of a generator's unit: the latent optimized to excite the unit (or inhibit it), and the
image the generator draws from it. A latent drawn from the job's sampler (seeded per unit and view) is moved by
Adam along the objective's gradient; a normal latent pays for a mean square above 1 (it stays where the sampler
puts latents: typical N(0, I) samples have mean square 1), a uniform one is clipped to [-1, 1]. No transforms
and no image parameterization: the generator's own output is the image (resized to the stage's size)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.generators.sample import to_pixels
from pipeline.inputs.models import LayerInfo
from pipeline.stages.featvis import objectives as obj
from pipeline.stages.featvis.optimize import FeatvisChunk, _objective, lr_factor
from pipeline.stages.featvis.relu_rules import parameters_frozen
from pipeline.stages.featvis.settings import FeatvisSettings
from pipeline.stages.featvis.truncate import LayerForward

PRIOR = 1.0  # weight of a normal latent's mean square above 1, against the objective


def visualize_latent(model: nn.Module, info: LayerInfo, layer_index: int, units: list[int], settings: FeatvisSettings,
                     seed: int, device: str = "cpu") -> FeatvisChunk:
    """Every view of every unit in `units` (one optimization batch), as `optimize.visualize` returns them."""
    views = settings.views()
    jobs = [(u, v) for u in units for v in range(len(views))]
    normal = settings.distribution == "normal"
    draw = (lambda r: r.standard_normal(settings.latent)) if normal else (lambda r: r.uniform(-1, 1, settings.latent))
    z = torch.tensor(np.stack([draw(np.random.default_rng([seed, layer_index, u, v])) for u, v in jobs]),
                     dtype=torch.float32, device=device, requires_grad=True)
    kinds = [views[v][0] for _, v in jobs]
    sign = torch.tensor([-1.0 if k == "negative" else 1.0 for k in kinds], device=device)
    ctx_units = torch.tensor([u for u, _ in jobs], device=device)
    groups = torch.tensor([i if k != "diverse" else -1 - i // len(views) for i, k in enumerate(kinds)], device=device)
    objective = _objective(settings)
    opt = torch.optim.Adam([z], lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(settings))
    with parameters_frozen(model):
        forward = LayerForward(model, info.name, objective.needs_output, info)
        for _ in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            acts, output = forward(z)
            ctx = obj.Context(acts, ctx_units, groups, output)
            value = torch.where(sign < 0, objective.inhibit(ctx), objective(ctx))
            if normal:
                value = value - PRIOR * F.relu(z.flatten(1).pow(2).mean(dim=1) - 1)
            (-value.sum()).backward()
            opt.step()
            sched.step()
            if not normal:
                with torch.no_grad():
                    z.clamp_(-1, 1)
        with torch.no_grad():
            acts, output = forward(z)
            reached = objective(obj.Context(acts, ctx_units, groups, output)).reshape(len(units), len(views))[:, 0]
            own = acts[torch.arange(len(jobs)), ctx_units].reshape(len(jobs), -1).amax(dim=1)
            drawn = model(z)
            drawn = F.interpolate(drawn, size=(settings.size, settings.size), mode="bilinear", align_corners=False,
                                  antialias=True) if drawn.shape[-1] != settings.size else drawn
            pixels = to_pixels(drawn, settings.mean, settings.std).numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels.repeat(3, axis=-1)
    per_unit = pixels[..., :3].reshape(len(units), len(views), settings.size, settings.size, 3)
    flat = (per_unit[:, 0].astype(np.float32) / 255).reshape(len(units), -1).std(axis=1) < settings.flat_std
    return FeatvisChunk(info.name, np.asarray(units), per_unit, reached.cpu().numpy(),
                        own.reshape(len(units), len(views))[:, 0].cpu().numpy(), flat)
