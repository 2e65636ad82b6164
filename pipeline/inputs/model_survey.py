"""One dry forward pass that tells the planner what it needs to know about the model.

Hooks on every module record, from a single forward on zeros: each selected layer's output shape
and how often it runs, the leaf modules that ran before its output was ready (whose weights
fingerprint the layer: a change to a later layer leaves an earlier layer's fingerprint as it was),
the selected convolutions that read the input image itself, and the shape of the model's output.
Receptive fields come from the traced graph instead (receptive_field.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.fingerprints import hash_tensors
from pipeline.inputs.models import LayerInfo


@dataclass(frozen=True)
class ModelSurvey:
    layers: list[LayerInfo]
    fingerprints: dict[str, str]  # layer -> hash of the modules upstream of it (and itself)
    input_convolutions: list[str]  # selected Conv2d layers applied to the input tensor itself
    output: tuple[int, ...] | str  # the model's output shape, or the type name of a non-tensor output


def survey_model(model: nn.Module, layers: list[str], input_shape: tuple[int, int, int]) -> ModelSurvey:
    """The survey of `layers` (module paths) from one forward pass on a batch of 2 zero images."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "model.archive: TorchScript modules do not support forward hooks, so their inner layers cannot be read. "
            "Save the model with torch.export (torch.export.save(torch.export.export(model, (example,)), 'model.pt2')) "
            "and point model.archive at that file, or use factory = \"file.py:function\" with a state_dict."
        )
    modules = dict(model.named_modules())
    x = torch.zeros((2, *input_shape))
    order: list[str] = []  # leaf modules in execution order
    ready: dict[str, int] = {}  # layer -> leaf modules run when its output was last ready
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in layers}
    reads_input: list[str] = []

    def on_layer(_m, _i, out, name):
        shapes[name].append(tuple(out.shape) if isinstance(out, torch.Tensor) else ())
        ready[name] = len(order)

    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
               for name, m in modules.items() if name and not any(True for _ in m.children())]
    handles += [modules[name].register_forward_hook(lambda m, i, o, name=name: on_layer(m, i, o, name)) for name in layers]
    handles += [modules[name].register_forward_pre_hook(lambda _m, inp, name=name: reads_input.append(name) if inp[0] is x else None)
                for name in layers if isinstance(modules[name], nn.Conv2d) and modules[name].groups == 1]
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as exc:
        raise UserError(f"the model failed on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}. "
                        "Check [model] input_size and mean/std (their length sets the channels).") from None
    finally:
        for h in handles:
            h.remove()
    infos = [_layer_info(name, shapes[name]) for name in layers]
    prints = {name: _upstream_hash(modules, sorted(set(order[: ready[name]]) | {name})) for name in layers}
    output = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    return ModelSurvey(infos, prints, [name for name in layers if name in reads_input], output)


def _layer_info(name: str, shapes: list[tuple[int, ...]]) -> LayerInfo:
    if not shapes:
        raise UserError(f"model.layers: module {name!r} is never called by the model's forward; choose another layer.")
    shape = shapes[-1]
    if len(shape) not in (2, 4):
        raise UserError(f"model.layers: module {name!r} outputs shape {shape or 'a non-tensor'}; units need an output of [N,C,H,W] or [N,C].")
    return LayerInfo(name, shape[1:], len(shapes))


def _upstream_hash(modules: dict[str, nn.Module], upstream: list[str]) -> str:
    h = hashlib.sha256()
    for mod in upstream:
        h.update(f"{mod}\0{type(modules[mod]).__name__}\0{modules[mod].extra_repr()}\n".encode())
        hash_tensors(h, [(f"{mod}.{k}", v) for k, v in modules[mod].state_dict().items()])
    return h.hexdigest()
