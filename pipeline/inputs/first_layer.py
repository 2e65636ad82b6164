"""The filters of a layer that convolves the input directly, as images (Zeiler & Fergus show these)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def input_convolutions(model: nn.Module, layers: list[str], input_shape: tuple[int, int, int]) -> list[str]:
    """The selected Conv2d layers whose input is the model's input tensor itself."""
    modules = dict(model.named_modules())
    x = torch.zeros((1, *input_shape))
    found: list[str] = []
    handles = [modules[name].register_forward_pre_hook(lambda m, inp, name=name: found.append(name) if inp[0] is x else None)
               for name in layers if isinstance(modules[name], nn.Conv2d) and modules[name].groups == 1]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [name for name in layers if name in found]


def filter_images(conv: nn.Conv2d) -> np.ndarray:
    """uint8 [out_channels, kh, kw, 3]: each filter scaled by its own largest magnitude, 128 = 0;
    one input channel is shown gray, more than three as their first three."""
    w = conv.weight.detach().float().cpu()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    img = (128 + 127 * w / scale).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if img.shape[-1] == 1:
        return img.repeat(3, axis=-1)
    return img[..., :3] if img.shape[-1] >= 3 else np.concatenate([img, np.full(img.shape[:-1] + (3 - img.shape[-1],), 128, np.uint8)], axis=-1)
