"""Where a layer's output keeps its channels (its units): told from the module, never guessed from the shape.

A unit is one channel of a layer's output. A Conv2d's output keeps them on axis 1 ([N, C, H, W]); a
Linear's and a LayerNorm's on the last axis, which is [N, C] after a flatten, but [N, H, W, C] inside a
ConvNeXt or Swin block (channels last) and [N, T, C] in a vision transformer (tokens). Reading H or T as
the channel axis would catalog garbage, so the layout of every selected output comes from what
produced it: the module itself when its type says (`own_layout`), else the last module of a known
layout that ran before it and produced an output of the same shape (a ReLU after a Conv2d, a residual
block ending in a BatchNorm2d and an addition).

Every stage reads a layer's units first: `units_first` turns any layout into the grid [N, C, H, W] (a
token layer's patch tokens on the patch grid the patch embedding made) and its prefix tokens [N, P, C].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

NCHW, NC, NHWC, TOKENS, WINDOWS = "nchw", "nc", "nhwc", "tokens", "windows"
SUPPORTED = (NCHW, NC, NHWC, TOKENS, WINDOWS)
CHANNELS_LAST = (NHWC, TOKENS, WINDOWS)  # the layouts with the units on the last axis
GIVEN = (NCHW, NC, NHWC, TOKENS)  # what [model] layouts may say (windows come from the model's own partition code)
MAX_PREFIX = 16  # tokens before the patch grid: class, registers (DINOv2 has 4), distillation

RANKS = {NCHW: 4, NC: 2, NHWC: 4, TOKENS: 3, WINDOWS: 4}  # a layout's number of axes, the batch's included
DESCRIBED = {
    NCHW: "[N, C, H, W], channels first",
    NC: "[N, C]",
    NHWC: "[N, H, W, C], channels last",
    TOKENS: "[N, T, C], tokens",
    WINDOWS: "[N, G, P, C], the grid cut into windows by the model's own partition (MaxViT)",
}


@dataclass(frozen=True)
class Windows:
    """Where the positions of a windowed output [N, G, P, C] lie on the grid: position (g, p) is the grid's flat
    index order[g * P + p]; as the model's own partition code puts them (windows.py)."""

    shape: tuple[int, int]  # (G, P)
    order: tuple[int, ...]

    @cached_property
    def to_grid(self) -> torch.Tensor:
        """int64 [H*W]: for each grid position, its index among the G*P windowed positions (made once per layer)."""
        return torch.argsort(torch.tensor(self.order))

_CHANNELS_LAST = {2: NC, 3: TOKENS, 4: NHWC}  # a Linear's output by its number of axes
_CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.MaxPool2d,
                   nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def own_layout(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """The layout of `module`'s output of `shape` (batch axis included) when the module's type settles it, else None."""
    exported = getattr(module, "_ty", None)  # a module of a torch.export archive keeps its type's path only
    if isinstance(exported, str):
        return _exported_layout(exported.rpartition(".")[2], len(shape))
    if len(shape) == 4 and isinstance(module, _CHANNELS_FIRST):
        return NCHW
    # any Linear applies its weight on the last axis; a LayerNorm subclass may permute first (ConvNeXt's LayerNorm2d)
    channels_last = (isinstance(module, nn.Linear)
                     or (type(module).forward is nn.LayerNorm.forward and len(module.normalized_shape) == 1))
    if channels_last:
        return _CHANNELS_LAST.get(len(shape))
    dims = getattr(module, "dims", None)  # torchvision.ops.Permute, as ConvNeXt and Swin use it
    if type(module).__name__ == "Permute" and len(shape) == 4 and dims is not None:
        return {(0, 3, 1, 2): NCHW, (0, 2, 3, 1): NHWC}.get(tuple(dims))
    if len(shape) == 2 and isinstance(module, (nn.BatchNorm1d, nn.Flatten)):
        return NC
    return None


def _exported_layout(kind: str, rank: int) -> str | None:
    """As own_layout, for a module known by its class name alone (torch.export.unflatten's InterpreterModule)."""
    if rank == 4 and kind in {cls.__name__ for cls in _CHANNELS_FIRST}:
        return NCHW
    if kind in ("Linear", "NonDynamicallyQuantizableLinear"):
        return _CHANNELS_LAST.get(rank)
    return None


def produced_layout(ran: list[tuple[tuple[int, ...], str | None]], shape: tuple[int, ...]) -> str | None:
    """The layout of the last output of `shape` among the modules that ran so far, (output shape, own layout) in
    execution order, whose own layout is known; None when no such module ran."""
    for ran_shape, layout in reversed(ran):
        if layout is not None and ran_shape == shape:
            return layout
    return None


def grid_shape(layout: str, shape: tuple[int, ...], grids: list[tuple[int, int]],
               input_hw: tuple[int, int]) -> tuple[tuple[int, ...], int] | str:
    """(units-first shape (C, H, W) or (C,), prefix tokens) of an output of `shape` (batch axis included) in
    `layout`; or why its positions cannot be placed on a grid of the image. `grids`: the (H, W) of the
    channels-first outputs that ran before it, in order (the patch embedding's tells a token layer its grid)."""
    if layout == NC:
        return (shape[1],), 0
    if layout == NCHW:
        return tuple(shape[1:]), 0
    if layout == NHWC:
        h, w = shape[1:3]
        if h * input_hw[1] != w * input_hw[0] and (h, w) not in grids:
            return (f"[N, {h}, {w}, C] is not a grid of the {input_hw[0]}x{input_hw[1]} input (its sides do not keep "
                    "the input's aspect, nor did an earlier feature map have them): windows or partitions of the "
                    "image made by code that does not say how they map back to the grid (MaxViT's partition modules "
                    "do, and are read)")
        return (shape[3], h, w), 0
    tokens = shape[1]
    for h, w in reversed(grids):
        if 0 <= tokens - h * w <= MAX_PREFIX:
            return (shape[2], h, w), tokens - h * w
    return (f"no feature map of at most {tokens} positions (a patch embedding) ran before its {tokens} tokens, so "
            "its patch grid cannot be told (windowed attention, pooled or merged tokens)")


def units_first(out: torch.Tensor, layout: str, grid: tuple[int, int] = (1, 1), prefix: int = 0,
                windows: Windows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the grid [N, C, H, W], a view but for windows ([N, C, 1, 1] for [N, C]), the prefix tokens [N, P, C] or
    None)."""
    if layout == WINDOWS:
        flat = out.reshape(out.shape[0], -1, out.shape[-1])[:, windows.to_grid.to(out.device)]
        return flat.unflatten(1, grid).permute(0, 3, 1, 2), None
    if layout == NHWC:
        return out.permute(0, 3, 1, 2), None
    if layout == TOKENS:
        grid = _scaled(grid, out.shape[1] - prefix)
        return out[:, prefix:].unflatten(1, grid).permute(0, 3, 1, 2), (out[:, :prefix] if prefix else None)
    return (out if out.dim() == 4 else out[:, :, None, None]), None


def _scaled(grid: tuple[int, int], positions: int) -> tuple[int, int]:
    """The patch grid of the same aspect holding `positions` tokens: a model that takes other input sizes (featvis
    renders at its own size) has a larger or smaller grid than the survey's."""
    if grid[0] * grid[1] == positions:
        return grid
    h = round(grid[0] * math.sqrt(positions / (grid[0] * grid[1])))
    if h < 1 or positions % h:
        raise ValueError(f"{positions} tokens after the prefix make no grid of the {grid[0]}x{grid[1]} patch grid's aspect")
    return h, positions // h


def units_axis_1(out: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of `out` with the units on axis 1 (writing into it writes into `out`)."""
    return out.movedim(-1, 1) if layout in CHANNELS_LAST else out


def native_map(mean_map: torch.Tensor, prefix_mean: torch.Tensor | None, layout: str,
               windows: Windows | None = None) -> torch.Tensor:
    """One image's output in the layer's own layout from its units-first grid [C, H, W] and prefix [P, C]."""
    if layout == WINDOWS:
        flat = mean_map.reshape(mean_map.shape[0], -1).T  # [H*W, C]
        return flat[torch.tensor(windows.order)].reshape(*windows.shape, -1).contiguous()
    if layout == NHWC:
        return mean_map.permute(1, 2, 0).contiguous()
    if layout == TOKENS:
        grid = mean_map.reshape(mean_map.shape[0], -1).T
        return torch.cat([prefix_mean, grid]) if prefix_mean is not None else grid.contiguous()
    return mean_map.reshape(-1) if layout == NC else mean_map


def why_not_read(name: str, shape: tuple[int, ...]) -> str:
    """Why the units of an output of unknown layout are not cataloged, for a refusal or the manifest's left-out list."""
    return (f"{name} outputs {list(shape)}, and neither its type nor a module before it with an output of that shape "
            "tells which axis holds its channels")
