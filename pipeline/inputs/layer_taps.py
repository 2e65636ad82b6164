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

from pipeline.errors import UserError
from pipeline.inputs.models import LayerInfo

Reducer = Callable[[str, torch.Tensor], None]


class _AllLayersSeen(Exception):
    """Raised from the last hook to skip the rest of the network."""


def probe_layers(model: nn.Module, layers: list[str], input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Shapes and call counts of the selected layers from one dry forward pass on zeros."""
    modules = dict(model.named_modules())
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "model.torchscript: TorchScript modules do not support forward hooks, so their inner layers cannot be read. "
            "Save the model with torch.export (torch.export.save(torch.export.export(model, (example,)), 'model.pt2')) "
            "and point model.torchscript at that file, or use factory = \"file.py:function\" with a state_dict."
        )
    seen: dict[str, list[tuple[int, ...]]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                seen[name].append(tuple(out.shape))
            else:
                seen[name].append(())
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise UserError(f"the model failed on an input of shape {(2, *input_shape)}: {type(exc).__name__}: {exc}. "
                        "Check [model] input_size and mean/std (their length sets the channels).") from None
    finally:
        for h in handles:
            h.remove()
    infos = []
    for name in layers:
        shapes = seen[name]
        if not shapes:
            raise UserError(f"model.layers: module {name!r} is never called by the model's forward; choose another layer.")
        shape = shapes[-1]
        if len(shape) not in (2, 4):
            raise UserError(f"model.layers: module {name!r} outputs shape {shape or 'a non-tensor'}; units need an output of [N,C,H,W] or [N,C].")
        infos.append(LayerInfo(name, shape[1:], len(shapes)))
    return infos


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
