"""Where a layer's output keeps its channels (its units): told from the module, never guessed from the shape.

A unit is one channel of a layer's output. A Conv2d's output keeps them on axis 1 ([N, C, H, W]); a
Linear's and a LayerNorm's on the last axis, which is [N, C] after a flatten, but [N, H, W, C] inside a
ConvNeXt or Swin block (channels last) and [N, T, C] in a vision transformer (tokens). Reading H or T as
the channel axis would catalog garbage, so the layout of every selected output comes from what
produced it: the module itself when its type says (`own_layout`), else the last module of a known
layout that ran before it and produced an output of the same shape (a ReLU after a Conv2d, a residual
block ending in a BatchNorm2d and an addition).
"""

from __future__ import annotations

from torch import nn

NCHW, NC, NHWC, TOKENS = "nchw", "nc", "nhwc", "tokens"
SUPPORTED = (NCHW, NC)  # what the stages read today; channels-last and token layouts are refused or left out

RANKS = {NCHW: 4, NC: 2, NHWC: 4, TOKENS: 3}  # a layout's number of axes, the batch's included
DESCRIBED = {
    NCHW: "[N, C, H, W], channels first",
    NC: "[N, C]",
    NHWC: "[N, H, W, C], channels last",
    TOKENS: "[N, T, C], tokens",
}

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


def why_not_read(name: str, shape: tuple[int, ...], layout: str | None) -> str:
    """Why the units of this output are not cataloged (yet), for a refusal or the manifest's left-out list."""
    if layout is None:
        return (f"{name} outputs {list(shape)}, and neither its type nor a module before it with an output of that shape "
                "tells which axis holds its channels")
    return (f"{name} outputs {list(shape)}: {DESCRIBED[layout]}; this version catalogs the units of channels-first "
            "[N, C, H, W] and [N, C] outputs only, and reading another axis as the channels would misread them")
