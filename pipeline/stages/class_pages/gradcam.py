"""Grad-CAM (Selvaraju et al. 2017) at one layer: the layer's channels weighted by the spatial mean of the class
score's gradient, summed. Signed, as captum's LayerGradCam returns it (the page shows its positive part). For a
layer followed by global average pooling and a linear head, it equals the class activation map (CAM) / (H * W)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.inputs.features import layer_modules
from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo


def grad_cam(model: nn.Module, layer: LayerInfo, inputs: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """float32 [N, h, w]: image i's map for class classes[i], on `layer`'s grid (h x w)."""
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, out):
        seen.append(out)
        return out.clone()  # what runs on is a copy: an in-place ReLU after the layer leaves `out` as it was

    handle = layer_modules(model)[layer.name].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))  # a graph even where the weights are frozen
            score = logits.gather(1, classes.to(logits.device)[:, None]).sum()
            grad = torch.autograd.grad(score, seen[-1])[0]
    finally:
        handle.remove()
    return channels_weighted(layer, seen[-1].detach(), grad).float().cpu().numpy()


def channels_weighted(layer: LayerInfo, out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """[N, h, w]: Grad-CAM from a layer's output and the score's gradient, both as the model passes them on (any
    layout): each channel weighted by its gradient's mean over the grid, summed."""
    acts, _ = units_first(out, layer.layout, layer.spatial, layer.prefix, layer.windows)
    grads, _ = units_first(grad, layer.layout, layer.spatial, layer.prefix, layer.windows)
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1)
