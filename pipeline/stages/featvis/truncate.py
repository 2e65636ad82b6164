"""The part of a model that featvis runs: only up to the target layer, with eval-mode batch norms folded into
the convolutions before them. Every optimization step runs it forward and backward, and on a CPU batch
norm's backward costs as much as the convolutions' (a quarter of a resnet18 step): folding removes it."""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from pipeline.inputs.features import layer_modules, source_of
from pipeline.inputs.layouts import NC, NCHW, units_first
from pipeline.inputs.models import LayerInfo


class _Stop(Exception):
    pass


def forward_to(model: nn.Module, layer: str, x: torch.Tensor, needs_output: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the layer's output, the model's output or None): without `needs_output` nothing after the layer runs."""
    module = dict(model.named_modules())[layer]
    seen: list[torch.Tensor] = []

    def hook(_m, _i, out):
        seen.append(out)
        if not needs_output:
            raise _Stop
    handle = module.register_forward_hook(hook)
    try:
        out = model(x)
    except _Stop:
        out = None
    finally:
        handle.remove()
    return seen[-1], out


class LayerForward:
    """Calls as `forward_to(model, layer, x, needs_output)` does, on a truncated, folded copy when the model can be
    traced (torch.fx) and the model's output is not needed; on the model itself, through a hook, otherwise. The
    layer's output comes units first ([N, C, H, W] or [N, C]: layouts.py) as `info` says where its units are. A
    dictionary's feature layer gives its features' pre-activations, from the layer it reads (Lucid's direction
    objective: the codes' top-k would give no gradient to a feature not yet among the k)."""

    def __init__(self, model: nn.Module, layer: str, needs_output: bool, info: LayerInfo | None = None) -> None:
        self.encoder = layer_modules(model)[layer] if source_of(layer) else None
        self.model, self.layer, self.needs_output, self.info = model, source_of(layer) or layer, needs_output, info
        self.module = None if needs_output or model.training else _truncated(model, self.layer)

    def relu_owner(self) -> nn.Module:
        """The module whose nn.ReLU submodules the forward runs through (for relus_replaced)."""
        return self.module if self.module is not None else self.model

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.module is None:
            acts, output = forward_to(self.model, self.layer, x, self.needs_output)
        else:
            acts, output = self.module(x)["out"], None
        if self.info is not None and self.info.layout not in (NCHW, NC):
            acts = units_first(acts, self.info.layout, self.info.spatial, self.info.prefix, self.info.windows)[0]
        if self.encoder is not None:
            pre = self.encoder.pre_units_first(acts if acts.dim() == 4 else acts[:, :, None, None])
            acts = pre if acts.dim() == 4 else pre[:, :, 0, 0]
        return acts, output


def _truncated(model: nn.Module, layer: str) -> nn.Module | None:
    """The truncated, folded copy; None where torch.fx cannot trace the model or the copy cannot be made (a
    module holding a non-leaf tensor, as hooks that keep their outputs do)."""
    try:
        if f"{layer}_1" in get_graph_node_names(model)[1]:
            return None  # the layer is called twice: the hook reads its last call
        graph = create_feature_extractor(model, {layer: "out"})
        folded = copy.deepcopy(graph).eval()  # create_feature_extractor shares the model's modules: fold a copy
    except Exception:  # noqa: BLE001 - any model that cannot be traced or copied keeps the hook path
        return None
    modules = dict(folded.named_modules())
    calls = Counter(n.target for n in folded.graph.nodes if n.op == "call_module"
                    and isinstance(modules[n.target], (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)))
    # a convolution called twice shares its weights between calls: folding one call's batch norm would change the other
    if max(calls.values(), default=1) == 1:
        folded = fuse(folded, inplace=True, no_trace=True)
    return folded.eval().requires_grad_(False)
