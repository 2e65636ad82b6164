"""One dry forward pass that tells the planner what it needs to know about the model.

Hooks on every module record, from a single forward on zeros: each selected layer's output shape,
its layout (which axis holds the units: layouts.py) and how often it runs, the leaf modules that ran
before its output was ready (whose weights fingerprint the layer: a change to a later layer leaves an
earlier layer's fingerprint as it was), the selected convolutions that read the input image itself,
and the shape of the model's output. Receptive fields come from the traced graph instead
(receptive_field.py). Of a default selection, the modules forward never runs and those whose units
this version cannot read are left out, each with the reason; named explicitly, either is an error.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.fingerprints import hash_tensors, json_fingerprint
from pipeline.inputs.layouts import (DESCRIBED, NC, NCHW, NHWC, RANKS, SUPPORTED, WINDOWS, grid_shape, own_layout,
                                     produced_layout, why_not_read)
from pipeline.inputs.models import LayerInfo
from pipeline.inputs.windows import partition_of

NEVER_RUN = ("never called by the model's forward: a branch eval mode skips (an auxiliary head), or a module whose "
             "weights the forward uses directly (Swin's attention, MultiheadAttention's out_proj)")


@dataclass(frozen=True)
class ModelSurvey:
    layers: list[LayerInfo]
    fingerprints: dict[str, str]  # layer -> hash of the modules upstream of it (and itself)
    input_convolutions: list[str]  # selected Conv2d layers applied to the input tensor itself
    output: tuple[int, ...] | str  # the model's output shape, or the type name of a non-tensor output
    left_out: list[dict] = field(default_factory=list)  # {name, shape, layout, why} of a default selection's modules not read


def survey_model(model: nn.Module, layers: list[str], input_shape: tuple[int, ...], explicit: bool = True,
                 layouts: dict[str, str] | None = None, image_hw: tuple[int, int] | None = None) -> ModelSurvey:
    """The survey of `layers` (module paths) from one forward pass on a batch of 2 zero images. `explicit`: the
    job named them (a module that cannot be read is an error), else they are the default selection (it is left
    out); `layouts`: [model] layouts, module path or glob -> layout, for outputs whose layout cannot be told."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "model.archive: TorchScript modules do not support forward hooks, so their inner layers cannot be read. "
            "Save the model with torch.export (torch.export.save(torch.export.export(model, (example,)), 'model.pt2')) "
            "and point model.archive at that file, or use factory = \"file.py:function\" with a state_dict."
        )
    modules = dict(model.named_modules())
    x = torch.zeros((2, *input_shape))
    hw = image_hw or input_shape[1:]  # a generator's input is a latent: its images' side is given
    trace = _Trace(layers, layouts or {}, hw)
    handles = [m.register_forward_hook(lambda m, _i, o, name=name: trace.on_leaf(m, o, name))
               for name, m in modules.items() if name and not any(True for _ in m.children())]
    handles += [modules[name].register_forward_hook(lambda m, _i, o, name=name: trace.on_layer(m, o, name))
                for name in layers]
    handles += [modules[name].register_forward_pre_hook(
        lambda _m, inp, name=name: trace.reads_input.append(name) if inp[0] is x else None)
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
    shapes, found = trace.shapes, trace.found
    placed = {name: _placed(shapes[name], found.get(name), trace.grids[: trace.grids_seen.get(name, 0)], hw)
              for name in layers}
    for name in layers:  # a channels-last output inside a block that cuts its map into windows with its own code
        if found.get(name) == NHWC and (windowed := partition_of(modules, name, shapes[name][-1])):
            (h, w), windows = windowed
            placed[name], found[name] = ((shapes[name][-1][3], h, w), 0, windows), WINDOWS
    left_out = [_why_left_out(name, shapes[name], found.get(name), placed[name], explicit) for name in layers]
    read = [name for name, why in zip(layers, left_out) if why is None]
    infos = [LayerInfo(name, placed[name][0], len(shapes[name]), found[name], *placed[name][1:]) for name in read]
    digests: dict[str, bytes] = {}  # each module's own, made once: a layer's hash combines its upstream modules'
    prints = {info.name: json_fingerprint([_upstream_hash(modules, sorted(set(trace.order[: trace.ready[info.name]])
                                                                          | {info.name}), digests),
                                           info.layout, info.shape, info.prefix])
              for info in infos}
    reads_input = [name for name in read if name in trace.reads_input]
    output = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    return ModelSurvey(infos, prints, reads_input, output, [w for w in left_out if w])


class _Trace:
    """What the survey's hooks record during the forward pass."""

    def __init__(self, layers: list[str], layouts: dict[str, str], input_hw: tuple[int, int]) -> None:
        self.layouts, self.input_hw = layouts, input_hw
        self.order: list[str] = []  # leaf modules in execution order
        self.ready: dict[str, int] = {}  # layer -> leaf modules run when its output was last ready
        self.shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in layers}
        self.reads_input: list[str] = []  # selected convolutions applied to the input tensor itself
        self.ran: list[tuple[tuple[int, ...], str | None]] = []  # every leaf output: (shape, own layout), in order
        self.found: dict[str, str | None] = {}  # layer -> the layout of its last output
        self.grids: list[tuple[int, int]] = []  # the (H, W) of every leaf output that is a grid of the image
        self.grids_seen: dict[str, int] = {}  # layer -> how many of `grids` ran before its last output

    def on_leaf(self, m: nn.Module, out, name: str) -> None:
        self.order.append(name)
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        self.ran.append((shape, own_layout(m, shape)))
        if self.ran[-1][1] == NCHW:
            self.grids.append(shape[2:])
        elif self.ran[-1][1] == NHWC and shape[1] * self.input_hw[1] == shape[2] * self.input_hw[0]:
            self.grids.append(shape[1:3])  # a channels-last map of the input's aspect (a patch merging)

    def on_layer(self, m: nn.Module, out, name: str) -> None:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        self.shapes[name].append(shape)
        self.ready[name] = len(self.order)
        self.found[name] = _layout(name, m, shape, self.ran, self.layouts)
        self.grids_seen[name] = len(self.grids)


def _layout(name: str, module: nn.Module, shape: tuple[int, ...], ran: list, layouts: dict[str, str]) -> str | None:
    """The job's layout for the module when it gives one, else the one its output certainly has (None: unknown)."""
    given = next((layout for glob, layout in layouts.items() if fnmatch.fnmatchcase(name, glob)), None)
    if given is not None:
        if RANKS[given] != len(shape):
            raise UserError(f"job key 'model.layouts' says {name} outputs {given}, but it outputs {list(shape)}: "
                            f"{given} has {RANKS[given]} axes. Correct or remove that entry.")
        return given
    if len(shape) == 2:
        return NC  # one axis besides the batch: the units' axis, whatever the module
    return own_layout(module, shape) or produced_layout(ran, shape)


def _placed(shapes: list[tuple[int, ...]], layout: str | None, grids: list[tuple[int, int]],
            input_hw: tuple[int, int]) -> tuple | str | None:
    """(units-first shape, prefix tokens) of a layer's last output (a windowed one gets its Windows third), why its
    positions are no grid of the image, or None (not run, no layout)."""
    if not shapes or not shapes[-1] or layout is None:
        return None
    if shapes[-1][0] != 2:
        return (f"its batch axis holds {shapes[-1][0]} rows for 2 images: windows of the image stacked on the batch "
                "(windowed attention), whose mapping back to the grid this version does not read")
    return grid_shape(layout, shapes[-1], grids, input_hw)


def _why_left_out(name: str, shapes: list[tuple[int, ...]], layout: str | None, placed: tuple | str | None,
                  explicit: bool) -> dict | None:
    """None when the layer's units are read; else, of a default selection, why it is left out."""
    if not shapes:
        why = NEVER_RUN
    elif not shapes[-1]:
        why = f"{name} outputs a non-tensor; units need a tensor output"
    elif layout not in SUPPORTED:
        why = why_not_read(name, shapes[-1])
    elif isinstance(placed, str):
        why = f"{name} outputs {list(shapes[-1])}, {DESCRIBED[layout]}, but {placed}"
    else:
        return None
    if explicit and not shapes:
        raise UserError(f"model.layers: module {name!r} is {why}; choose another layer.")
    if explicit and not shapes[-1]:
        raise UserError(f"model.layers: {why}; choose another layer.")
    if explicit and layout is None:
        raise UserError(f"model.layers: {why}. Say where they are with [model] layouts = {{ \"{name}\" = \"nchw\" }} "
                        '(or "nhwc", "tokens", "nc"), or choose another module.')
    if explicit:
        raise UserError(f"model.layers: {why}. Choose another module or leave it out.")
    return {"name": name, "shape": list(shapes[-1]) if shapes else None, "layout": layout, "why": why}


def _upstream_hash(modules: dict[str, nn.Module], upstream: list[str], digests: dict[str, bytes]) -> str:
    """The hash of the upstream modules' names, types, settings and tensors, each module's tensors read once per
    survey (hashing them again for every layer made planning quadratic: regnet_y_32gf's survey took 11.8 s, now 0.5)."""
    h = hashlib.sha256()
    for mod in upstream:
        if mod not in digests:
            own = hashlib.sha256(f"{mod}\0{type(modules[mod]).__name__}\0{modules[mod].extra_repr()}\n".encode())
            hash_tensors(own, [(f"{mod}.{k}", v) for k, v in modules[mod].state_dict().items()])
            digests[mod] = own.digest()
        h.update(digests[mod])
    return h.hexdigest()
