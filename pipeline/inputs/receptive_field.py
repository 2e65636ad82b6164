"""Theoretical receptive fields: which input pixels can influence a feature-map position of a layer.

The model's forward is traced with torch.fx; each graph node gets a field (jump, offset,
size per axis, top-left convention) propagated from the input: convolutions and poolings
grow it, element-wise operations keep it, merging branches take the union. Global pooling,
flatten and Linear make every position see the whole image. What cannot be analysed falls
back to the whole image, marked `exact=False`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp


@dataclass(frozen=True)
class ReceptiveField:
    """Where one layer's feature-map positions look in the input (top-left convention)."""

    jump: tuple[int, int] = (1, 1)  # input pixels between neighbouring positions (y, x)
    offset: tuple[int, int] = (0, 0)  # input coordinate where position 0's box starts (negative: padding)
    size: tuple[int, int] = (1, 1)  # box extent in input pixels (y, x)
    whole_image: bool = False  # every position sees the whole input
    exact: bool = True  # False when an operation was not understood and the whole image was assumed
    around_peak: bool = False  # not the theoretical field: a box of half the image's side around the position's patch

    def box(self, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1), half-open, clipped to the image."""
        return tuple(int(v) for v in self.boxes(np.array([y]), np.array([x]), height, width)[0])

    def boxes(self, y: np.ndarray, x: np.ndarray, height: int, width: int) -> np.ndarray:
        """Vectorized `box`: int64 array [..., 4]."""
        y, x = np.asarray(y, np.int64), np.asarray(x, np.int64)
        if self.whole_image:
            full = np.array([0, 0, height, width], np.int64)
            return np.broadcast_to(full, (*np.broadcast(y, x).shape, 4)).copy()
        y0 = self.offset[0] + y * self.jump[0]
        x0 = self.offset[1] + x * self.jump[1]
        out = np.stack([y0, x0, y0 + self.size[0], x0 + self.size[1]], axis=-1)
        return np.clip(out, 0, np.array([height, width, height, width]))


def around_peak(field: ReceptiveField, grid: tuple[int, int], input_hw: tuple[int, int]) -> ReceptiveField:
    """The crop rule where the analysis could not follow the layer (attention, token and channels-last blocks):
    every position may see the whole image, but the layer keeps a grid of patches, so a crop is the square of half
    the image's side centred on the position's patch. A field that was understood, or a layer without a grid
    ([N, C], a 1x1 map), keeps its field."""
    if field.exact or not field.whole_image or grid == (1, 1):
        return field
    jump = (max(1, input_hw[0] // grid[0]), max(1, input_hw[1] // grid[1]))
    size = (max(input_hw[0] // 2, jump[0]), max(input_hw[1] // 2, jump[1]))
    offset = (jump[0] // 2 - size[0] // 2, jump[1] // 2 - size[1] // 2)
    return ReceptiveField(jump, offset, size, whole_image=False, exact=False, around_peak=True)


def grid_cell(grid: tuple[int, int], image_hw: tuple[int, int]) -> ReceptiveField:
    """A generator's unit region: a position's cell of the layer's grid scaled to the generated image (GAN
    Dissection's), widened around the cell to a quarter of the image's side at least, so that a fine layer's crop
    still shows what is drawn around it. A layer without a grid draws on the whole image."""
    if grid == (1, 1):
        return WHOLE
    jump = (max(1, image_hw[0] // grid[0]), max(1, image_hw[1] // grid[1]))
    size = (max(jump[0], image_hw[0] // 4), max(jump[1], image_hw[1] // 4))
    return ReceptiveField(jump, (jump[0] // 2 - size[0] // 2, jump[1] // 2 - size[1] // 2), size)


WHOLE = ReceptiveField(whole_image=True)
UNKNOWN = ReceptiveField(whole_image=True, exact=False)

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.AlphaDropout, nn.BatchNorm2d, nn.SyncBatchNorm, nn.LocalResponseNorm, nn.Softmax2d,
)
_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.cat, torch.clamp,
    F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.dropout, F.batch_norm,
    torch.nn.functional.elu, torch.exp, torch.abs,
}
_POINTWISE_METHODS = {
    "add", "add_", "sub", "mul", "mul_", "div", "relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous",
    "float", "to", "type_as", "clone", "detach", "abs", "exp", "neg", "pow",
}
_GLOBAL_FUNCTIONS = {torch.flatten, torch.mean, torch.sum, torch.amax, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_GLOBAL_METHODS = {"flatten", "view", "reshape", "mean", "sum", "amax", "max"}


def receptive_fields(model: nn.Module, layers: Sequence[str], input_shape: tuple[int, int, int]) -> dict[str, ReceptiveField]:
    """The field of each selected layer (module path); input_shape = (channels, height, width)."""
    try:
        module = fx.symbolic_trace(model)
        param = next(model.parameters(), None)
        ShapeProp(module).propagate(torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else None))
    except Exception:  # data-dependent control flow, TorchScript, exported programs: no graph to analyse
        return {name: UNKNOWN for name in layers}
    modules = dict(model.named_modules())
    fields: dict[fx.Node, ReceptiveField | None] = {}
    last_in_scope: dict[str, fx.Node] = {}
    for node in module.graph.nodes:
        fields[node] = _field_of(node, fields, modules)
        for path in node.meta.get("nn_module_stack", {}):  # the module paths this node was created inside
            last_in_scope[path] = node
    return {name: fields.get(last_in_scope.get(name)) or UNKNOWN for name in layers}


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _inputs(node: fx.Node, fields: dict) -> list[ReceptiveField]:
    found = []
    for arg in node.all_input_nodes:
        f = fields.get(arg)
        if f is not None and _shape(arg) is not None:
            found.append(f)
    return found


def _field_of(node: fx.Node, fields: dict, modules: dict[str, nn.Module]) -> ReceptiveField | None:
    if node.op == "placeholder":
        return ReceptiveField()
    if node.op in ("get_attr", "output") or _shape(node) is None:
        return None  # parameters, constants, sizes: carry no spatial dependence
    inputs = _inputs(node, fields)
    if not inputs:
        return None
    first = node.all_input_nodes[0]
    if node.op == "call_module":
        return _module_field(modules[node.target], inputs, first, node)
    if node.op == "call_function":
        return _function_field(node, inputs, first)
    if node.op == "call_method":
        return _method_field(node, inputs, first)
    return UNKNOWN


def _module_field(m: nn.Module, inputs: list, first: fx.Node, node: fx.Node) -> ReceptiveField:
    if isinstance(m, nn.Conv2d):
        return _kernel(inputs[0], m.kernel_size, m.stride, _conv_padding(m), m.dilation)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        dilation = getattr(m, "dilation", 1)
        return _kernel(inputs[0], m.kernel_size, m.stride or m.kernel_size, m.padding, dilation)
    if isinstance(m, _POINTWISE_MODULES):
        return _union(inputs)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)):
        return _global(inputs[0], first, node)
    return UNKNOWN


def _function_field(node: fx.Node, inputs: list, first: fx.Node) -> ReceptiveField:
    fn = node.target
    if fn is F.conv2d:
        weight = _shape(node.args[1]) if len(node.args) > 1 else None
        if weight is None:
            return UNKNOWN
        stride, padding, dilation = (node.args[i] if len(node.args) > i else node.kwargs.get(k, 1 if k != "padding" else 0)
                                     for i, k in ((3, "stride"), (4, "padding"), (5, "dilation")))
        return _kernel(inputs[0], weight[2:], stride, padding, dilation)
    if fn in (F.max_pool2d, F.avg_pool2d):
        args = list(node.args) + [None] * 5
        kernel = args[1] if args[1] is not None else node.kwargs.get("kernel_size")
        stride = args[2] or node.kwargs.get("stride") or kernel
        padding = args[3] if args[3] is not None else node.kwargs.get("padding", 0)
        return _kernel(inputs[0], kernel, stride, padding, node.kwargs.get("dilation", 1))
    if fn in _POINTWISE_FUNCTIONS:
        return _union(inputs)
    if fn in _GLOBAL_FUNCTIONS:
        return _global(inputs[0], first, node)
    return UNKNOWN


def _method_field(node: fx.Node, inputs: list, first: fx.Node) -> ReceptiveField:
    if node.target in _POINTWISE_METHODS:
        return _union(inputs)
    if node.target in _GLOBAL_METHODS:
        return _global(inputs[0], first, node)
    return UNKNOWN


def _global(field: ReceptiveField, source: fx.Node, node: fx.Node) -> ReceptiveField:
    """Flatten, global pooling, reshape: a 1x1 map keeps its field; a reduction over space sees everything."""
    before, after = _shape(source), _shape(node)
    if before == after:
        return field
    if before is not None and len(before) == 4 and before[2:] == (1, 1):
        return field
    if after is not None and (len(after) == 2 or (len(after) == 4 and after[2:] == (1, 1))):
        return WHOLE if field.exact else UNKNOWN
    return UNKNOWN


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):  # 'valid' or 'same'
        if m.padding == "valid":
            return (0, 0)
        return tuple((d * (k - 1)) // 2 for k, d in zip(m.kernel_size, m.dilation))
    return _pair(m.padding)


def _kernel(field: ReceptiveField, kernel, stride, padding, dilation) -> ReceptiveField:
    if field.whole_image:
        return field
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    span = [d[i] * (k[i] - 1) for i in range(2)]
    return ReceptiveField(
        jump=(field.jump[0] * s[0], field.jump[1] * s[1]),
        offset=(field.offset[0] - p[0] * field.jump[0], field.offset[1] - p[1] * field.jump[1]),
        size=(field.size[0] + span[0] * field.jump[0], field.size[1] + span[1] * field.jump[1]),
    )


def _union(fields: list[ReceptiveField]) -> ReceptiveField:
    """The field of an element-wise combination: every input's box at once."""
    if any(f.whole_image for f in fields):
        return WHOLE if all(f.exact for f in fields) else UNKNOWN
    if len({f.jump for f in fields}) > 1:
        return UNKNOWN
    lo = tuple(min(f.offset[i] for f in fields) for i in range(2))
    hi = tuple(max(f.offset[i] + f.size[i] for f in fields) for i in range(2))
    return ReceptiveField(fields[0].jump, lo, (hi[0] - lo[0], hi[1] - lo[1]))
