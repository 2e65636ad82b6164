"""Gradient projections of a unit's maximal activation back to the pixels of its top examples:
the deconvnet (Zeiler & Fergus 2014) and guided backpropagation (Springenberg et al. 2015).

Both differ from the plain gradient only at ReLUs: the deconvnet passes the positive part of the
gradient whatever the forward input, guided backpropagation only where the input was positive
too. Every nn.ReLU of the model is swapped for that rule while projecting. Each projection is cut
to the example's receptive-field box and resized like the example crops.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.activations.crops import resize_region
from pipeline.stages.featvis.relu_rules import parameters_frozen, relus_replaced

METHODS = ("deconvnet", "guided")


@dataclass(frozen=True)
class ProjectionRequest:
    layer: str
    unit: int
    rank: int  # among the unit's top examples
    image_id: int
    y: int  # the maximum's position in the layer's map
    x: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in input pixels, half-open


def top_example_requests(layers: dict[str, Any], names: list[str]) -> list[ProjectionRequest]:
    """One request per top example of the named layers (their activations results): the unit's maximum in that
    image, with the example's receptive-field box."""
    requests = []
    for name in names:
        ex = layers[name].examples
        for i in np.flatnonzero(ex["sign"] == "top"):
            box = (int(ex["box_y0"][i]), int(ex["box_x0"][i]), int(ex["box_y1"][i]), int(ex["box_x1"][i]))
            requests.append(ProjectionRequest(name, int(ex["unit"][i]), int(ex["rank"][i]), int(ex["image_id"][i]),
                                              int(ex["y"][i]), int(ex["x"][i]), box))
    return requests


@dataclass
class ProjectionBatch:
    unit: np.ndarray  # int [M]
    rank: np.ndarray  # int [M]
    images: np.ndarray  # uint8 [M, 2, P, P, 3]: deconvnet, guided; 128 = no influence


class _Rule:
    """Which backward rule the ReLUs of one projection round apply; set before each backward pass of that round."""

    def __init__(self) -> None:
        self.method = METHODS[0]


class _ProjectionReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: _Rule) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.rule = rule
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        positive = grad.clamp(min=0)
        return (positive if ctx.rule.method == "deconvnet" else positive * (x > 0)), None


def project(model: nn.Module, layers: list[LayerInfo], batches: Iterable[Batch], requests: list[ProjectionRequest],
            patch: int) -> dict[str, ProjectionBatch]:
    """Both projections for every request whose image appears in `batches`.

    In each round every image contributes at most one request, so one backward pass serves all the
    round's images (they do not interact); an image holding several units' maxima takes several rounds,
    and a round runs only the images that still have a request.
    """
    by_image: dict[int, list[ProjectionRequest]] = defaultdict(list)
    for req in requests:
        by_image[req.image_id].append(req)
    filled: dict[str, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
    rule = _Rule()
    with parameters_frozen(model), relus_replaced(model, lambda x: _ProjectionReLU.apply(x, rule)):
        for batch in batches:
            rows = {int(i): r for r, i in enumerate(batch.image_ids.tolist())}
            rounds = max((len(by_image.get(i, ())) for i in rows), default=0)
            for r in range(rounds):
                picked = [(row, by_image[i][r]) for i, row in rows.items() if len(by_image.get(i, ())) > r]
                inputs = batch.inputs[[row for row, _ in picked]]
                for (_, req), images in zip(picked, _one_round(model, layers, inputs, [req for _, req in picked], patch, rule)):
                    filled[req.layer].append((req.unit, req.rank, images))
    return {layer: ProjectionBatch(np.array([f[0] for f in rows]), np.array([f[1] for f in rows]),
                                   np.stack([f[2] for f in rows])) for layer, rows in filled.items()}


def _one_round(model: nn.Module, layers: list[LayerInfo], inputs: torch.Tensor,
               picked: list[ProjectionRequest], patch: int, rule: _Rule) -> list[np.ndarray]:
    """Both projections of request i onto image i of `inputs`."""
    x = inputs.detach().clone().requires_grad_(True)
    outputs: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), tapped(model, layers, lambda name, out: outputs.__setitem__(name, out)) as run:
        run(x)
        target = sum(outputs[req.layer][row, req.unit, min(req.y, outputs[req.layer].shape[2] - 1),
                                         min(req.x, outputs[req.layer].shape[3] - 1)] for row, req in enumerate(picked))
        grads = []
        for method in METHODS:
            rule.method = method
            grads.append(torch.autograd.grad(target, x, retain_graph=method != METHODS[-1])[0].detach())
    out = []
    for row, req in enumerate(picked):
        y0, x0, y1, x1 = req.box
        views = [_to_image(resize_region(g[row:row + 1, :, y0:y1, x0:x1].float(), patch)[0]) for g in grads]
        out.append(np.stack(views))
    return out


def _to_image(grad: torch.Tensor) -> np.ndarray:
    """[C, P, P] gradient -> uint8 [P, P, 3], scaled by its largest magnitude, 128 = 0."""
    scale = grad.abs().max().clamp(min=1e-12)
    img = (128 + 127 * grad / scale).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return img.repeat(3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
