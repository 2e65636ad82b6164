"""Where a classifier's class vectors are: its final Linear (the one whose output is the model's output), and the
cataloged layer whose channels it reads."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.features import layer_modules, source_of
from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo


def final_linear(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, nn.Linear]:
    """(name, module) of the last nn.Linear whose output is the model's output, found by one forward on zeros."""
    called: list[tuple[str, nn.Linear, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, _i, out, name=name: called.append((name, m, out)))
               for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            logits = model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    for name, module, out in reversed(called):
        if isinstance(logits, torch.Tensor) and out.shape == logits.shape and torch.equal(out, logits):
            return name, module
    raise UserError("stage 'class_pages' reads each class's vector from the model's final nn.Linear, but no nn.Linear's "
                    "output is the model's output: the model must end with a Linear classifier (logits [N, classes]).")


def class_layer(model: nn.Module, layers: list[LayerInfo], head: str, asked: str,
                input_shape: tuple[int, ...]) -> LayerInfo:
    """The cataloged layer Grad-CAM and IBD read: `asked`, or the last layer with a grid and as many units as the
    final Linear `head` has inputs, whose grid positions reach that Linear's input (a ViT's last patch tokens do not:
    its head reads the class token alone, and Grad-CAM there is 0 everywhere)."""
    linear = dict(model.named_modules())[head]
    channels = linear.in_features
    fits = [info for info in layers if info.units == channels and source_of(info.name) is None
            and info.spatial != (1, 1)]
    if asked:
        found = next((info for info in layers if info.name == asked), None)
        if found is None or found not in fits:
            raise UserError(f"job key 'stages.class_pages.layer' = {asked!r} must be a cataloged layer with a feature grid "
                            f"and {channels} units (the channels {head} reads); candidates: "
                            f"{', '.join(i.name for i in fits) or 'none'}.")
        return found
    reaching = [info for info in fits if _grid_reaches(model, info, linear, input_shape)]
    if not reaching:
        raise UserError(f"stage 'class_pages' needs a cataloged layer with a feature grid and {channels} units (the "
                        f"channels the classifier {head} reads, pooled) whose positions reach the logits"
                        f"{' (' + ', '.join(i.name for i in fits) + ' do not)' if fits else ''}: add it to [model] "
                        "layers, or name it in stages.class_pages.layer.")
    return reaching[-1]


def _grid_reaches(model: nn.Module, info: LayerInfo, linear: nn.Linear, input_shape: tuple[int, ...]) -> bool:
    """Whether the head's input depends on the layer's grid: the gradient of a seeded random direction of that input,
    on a seeded random image, is nonzero somewhere on the grid (the head's own weights play no part: a zero-initialized
    head, as torchvision's ViT has, reaches nothing yet)."""
    seen: list[torch.Tensor] = []
    reads: list[torch.Tensor] = []
    handles = [layer_modules(model)[info.name].register_forward_hook(lambda _m, _i, out: seen.append(out)),
               linear.register_forward_hook(lambda _m, inputs, _out: reads.append(inputs[0]))]
    try:
        generator = torch.Generator().manual_seed(0)
        device = next(model.parameters()).device
        x = torch.randn(1, *input_shape, generator=generator).to(device).requires_grad_(True)
        with torch.enable_grad():
            model(x)
            direction = torch.randn(reads[-1].shape, generator=generator).to(device)
            grad = torch.autograd.grad((reads[-1] * direction).sum(), seen[-1], allow_unused=True)[0]
    finally:
        for h in handles:
            h.remove()
    if grad is None:
        return False
    grid, _ = units_first(grad, info.layout, info.spatial, info.prefix, info.windows)
    return bool(grid.abs().sum() > 0)
