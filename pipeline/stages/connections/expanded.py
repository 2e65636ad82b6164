"""Expanded weights (Olah et al., "Visualizing Weights", Distill 2020): how much a unit of a later layer rests on
each unit of an earlier one, through everything between them.

The model is linearized as Distill's appendix (and captum's `extract_expanded_weights`) do: every element-wise
activation module (ReLU, GELU, SiLU, ...) becomes the identity and every max-pooling an average pooling of the
same window. The earlier layer's output is then replaced by a variable, set to its mean activation map, and the
later unit's activation at the centre of its map is differentiated with respect to it: the gradient, summed over
positions (a token layer's prefix tokens included), is the connection. Residual additions carry their identity
path into it; what stays non-linear after the linearization (attention, normalization by statistics) is read at
the earlier layer's mean map, its local linear part. On a network that the linearization makes linear (stacked
convolutions, eval-mode batch norms, residual blocks) the result is exact.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo

ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh, nn.Sigmoid)
CHUNK = 64  # later units differentiated together (each its own copy of the batch)


class _Seen(Exception):
    pass


def linearized(model: nn.Module) -> nn.Module:
    """A copy of `model` with element-wise activations as identities and max-pooling as average pooling."""
    out = copy.deepcopy(model).eval().requires_grad_(False)
    for name, module in list(out.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(module, ELEMENTWISE):
            out.get_submodule(parent).add_module(child, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            out.get_submodule(parent).add_module(child, nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                                                     module.ceil_mode, count_include_pad=False))
        elif isinstance(module, nn.AdaptiveMaxPool2d):
            out.get_submodule(parent).add_module(child, nn.AdaptiveAvgPool2d(module.output_size))
    return out


def expanded_weights(model: nn.Module, earlier: LayerInfo, later: LayerInfo, point: torch.Tensor,
                     input_shape: tuple[int, ...]) -> np.ndarray | None:
    """float64 [later units, earlier units]: the connections of a linearized model (`linearized`), read at `point`
    (one image's output of the earlier layer, in its own layout); None when the later layer does not depend on it."""
    modules = dict(model.named_modules())
    device = next(iter(model.parameters()), torch.zeros(0)).device
    rows = []
    for start in range(0, later.units, CHUNK):
        units = torch.arange(start, min(start + CHUNK, later.units), device=device)
        x = point.to(device, torch.float32)[None].repeat(len(units), *([1] * point.dim())).requires_grad_(True)
        seen: dict[str, torch.Tensor] = {}
        calls = {"earlier": 0, "later": 0}

        def replace(_m, _i, _out):
            calls["earlier"] += 1
            return x if calls["earlier"] == earlier.calls else None

        def capture(_m, _i, out):
            calls["later"] += 1
            if calls["later"] == later.calls:
                seen["out"] = out
                raise _Seen

        handles = [modules[earlier.name].register_forward_hook(replace), modules[later.name].register_forward_hook(capture)]
        try:
            with torch.enable_grad():
                model(torch.zeros(len(units), *input_shape, device=device))
        except _Seen:
            pass
        finally:
            for h in handles:
                h.remove()
        if "out" not in seen:
            return None
        grid = units_first(seen["out"], later.layout, later.spatial, later.prefix, later.windows)[0]
        centre = grid[torch.arange(len(units), device=device), units, grid.shape[2] // 2, grid.shape[3] // 2]
        if not centre.requires_grad:
            return None
        (grad,) = torch.autograd.grad(centre.sum(), x, allow_unused=True)
        if grad is None:
            return None
        mine, prefix = units_first(grad, earlier.layout, earlier.spatial, earlier.prefix, earlier.windows)
        total = mine.double().sum(dim=(2, 3)) + (prefix.double().sum(dim=1) if prefix is not None else 0)
        rows.append(total.cpu().numpy())
    return np.concatenate(rows)


def strongest(weights: np.ndarray, top: int) -> list[tuple[int, int, float, int]]:
    """(row, column, weight, rank) of each row's `top` largest positive and `top` most negative weights, the
    strongest first within each sign; zero weights are no connection."""
    out = []
    for row, values in enumerate(weights):
        for sign in (1, -1):
            order = np.argsort(-sign * values, kind="stable")[:top]
            kept = [c for c in order if sign * values[c] > 0]
            out += [(row, int(c), float(values[c]), rank) for rank, c in enumerate(kept)]
    return out
