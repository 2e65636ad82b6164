"""Reading every selected layer's output in one forward pass.

Forward hooks hand each layer's output to a reducer *inside* the hook (a
following in-place ReLU would overwrite it later), and the pass stops as soon
as the last selected layer has been seen: nothing after it is computed. The
reducer sees every layout units first, [N, C, H, W] (layouts.py); a token
layer's prefix tokens go to `on_prefix`. A dictionary's feature layer is read from its encoder (features.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.inputs.features import layer_modules
from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo

Reducer = Callable[[str, torch.Tensor], None]


class _AllLayersSeen(Exception):
    """Raised from the last hook to skip the rest of the network."""


@contextmanager
def tapped(model: nn.Module, layers: list[LayerInfo], reduce: Reducer,
           on_prefix: Reducer | None = None) -> Iterator[Callable[[torch.Tensor], None]]:
    """Hooks installed for the duration; yields `run(batch)` which feeds every layer's output to `reduce`, units first
    ([N, C, H, W]), and a token layer's prefix tokens ([N, P, C]) to `on_prefix`.

    A module called several times per forward (a shared ReLU) is read on its last call.
    """
    modules = layer_modules(model)
    infos = {info.name: info for info in layers}
    calls = {info.name: 0 for info in layers}
    wanted = {info.name: info.calls for info in layers}
    done: set[str] = set()

    def make_hook(name: str):
        def hook(_m, _i, out):
            calls[name] += 1
            if calls[name] == wanted[name]:
                info = infos[name]
                grid, prefix = units_first(out, info.layout, info.spatial, info.prefix, info.windows)
                reduce(name, grid)
                if prefix is not None and on_prefix is not None:
                    on_prefix(name, prefix)
                done.add(name)
                if len(done) == len(layers):
                    raise _AllLayersSeen
        return hook

    handles = [modules[info.name].register_forward_hook(make_hook(info.name)) for info in layers]

    def run(batch: torch.Tensor) -> None:
        calls.update(dict.fromkeys(calls, 0))
        done.clear()
        try:
            model(batch)
        except _AllLayersSeen:
            pass

    try:
        yield run
    finally:
        for h in handles:
            h.remove()
