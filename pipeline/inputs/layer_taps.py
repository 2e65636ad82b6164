"""Reading every selected layer's output in one forward pass.

Forward hooks hand each layer's output to a reducer *inside* the hook (a
following in-place ReLU would overwrite it later), and the pass stops as soon
as the last selected layer has been seen: nothing after it is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.inputs.models import LayerInfo

Reducer = Callable[[str, torch.Tensor], None]


class _AllLayersSeen(Exception):
    """Raised from the last hook to skip the rest of the network."""


@contextmanager
def tapped(model: nn.Module, layers: list[LayerInfo], reduce: Reducer) -> Iterator[Callable[[torch.Tensor], None]]:
    """Hooks installed for the duration; yields `run(batch)` which feeds every layer's output to `reduce`.

    A module called several times per forward (a shared ReLU) is read on its last call.
    """
    modules = dict(model.named_modules())
    calls = {info.name: 0 for info in layers}
    wanted = {info.name: info.calls for info in layers}
    done: set[str] = set()

    def make_hook(name: str):
        def hook(_m, _i, out):
            calls[name] += 1
            if calls[name] == wanted[name]:
                reduce(name, out if out.dim() == 4 else out[:, :, None, None])
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
