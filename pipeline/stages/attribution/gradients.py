"""Gradient maps of a unit's maximum on its top examples: saliency (Simonyan et al. 2014: the input gradient's
largest magnitude over the colour channels) and the unit's Grad-CAM on the cataloged layer before it (Selvaraju et
al. 2017, with the unit's activation as the score), both at input resolution.

Each round backpropagates up to ROUND requests at once, one per row: an image holding several requests (units whose
top example it is) comes as several copies, which do not interact. The ReLU modules run out of place so that reading
several layers stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.inputs.features import layer_modules
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo
from pipeline.stages.class_pages.gradcam import channels_weighted
from pipeline.stages.featvis.projections import ProjectionRequest
from pipeline.stages.featvis.relu_rules import parameters_frozen, relus_replaced


ROUND = 32  # requests (image copies) per forward and backward pass


@dataclass(frozen=True)
class GradientMaps:
    saliency: torch.Tensor  # float [H, W] >= 0
    gradcam: torch.Tensor | None  # float [H, W], signed; None for a layer with no cataloged layer before it


def gradient_maps(model: nn.Module, layers: list[LayerInfo], earlier: dict[str, LayerInfo | None],
                  inputs: torch.Tensor, image_ids: list[int], requests: list[ProjectionRequest]) -> dict[ProjectionRequest, GradientMaps]:
    """Both maps for every request whose image is among `image_ids` (rows of `inputs`)."""
    rows = {i: r for r, i in enumerate(image_ids)}
    pairs = [(rows[req.image_id], req) for req in requests if req.image_id in rows]
    tapped_layers = {info.name: info for info in layers}
    for info in earlier.values():
        if info is not None:
            tapped_layers[info.name] = info
    out = {}
    with parameters_frozen(model), relus_replaced(model, torch.relu):
        for start in range(0, len(pairs), ROUND):
            picked = pairs[start:start + ROUND]
            found = _one_round(model, list(tapped_layers.values()), earlier, inputs[[row for row, _ in picked]],
                               [req for _, req in picked])
            out.update(zip([req for _, req in picked], found))
    return out


def _one_round(model: nn.Module, layers: list[LayerInfo], earlier: dict[str, LayerInfo | None], inputs: torch.Tensor,
               picked: list[ProjectionRequest]) -> list[GradientMaps]:
    x = inputs.detach().clone().requires_grad_(True)
    outputs: dict[str, torch.Tensor] = {}
    before = {e.name: e for req in picked if (e := earlier.get(req.layer)) is not None}
    raw: dict[str, torch.Tensor] = {}  # the earlier layers' outputs as the model passes them on (the tap's
    # units-first view of a token or channels-last output is not on the path to the unit: no gradient reaches it)
    modules = layer_modules(model)
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: raw.__setitem__(name, out))
             for name in before]
    try:
        with torch.enable_grad(), tapped(model, layers, lambda name, out: outputs.__setitem__(name, out)) as run:
            run(x)
            target = sum(outputs[req.layer][row, req.unit, req.y, req.x] for row, req in enumerate(picked))
            names = sorted(before)
            grads = torch.autograd.grad(target, [x] + [raw[name] for name in names], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    cams = {name: _cam(before[name], raw[name].detach(), grad) for name, grad in zip(names, grads[1:])}
    saliency = grads[0].detach().abs().amax(dim=1)  # [N, H, W]
    found = []
    for row, req in enumerate(picked):
        e = earlier.get(req.layer)
        cam = None
        if e is not None:
            cam = F.interpolate(cams[e.name][row][None, None], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
        found.append(GradientMaps(saliency[row], cam))
    return found


def _cam(info: LayerInfo, out: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """[N, h, w]: each image's Grad-CAM on the layer's grid (0 where the unit does not depend on the layer)."""
    if grad is None:
        acts, _ = units_first(out, info.layout, info.spatial, info.prefix, info.windows)
        return torch.zeros(acts.shape[0], *acts.shape[2:], device=acts.device)
    return channels_weighted(info, out, grad)
