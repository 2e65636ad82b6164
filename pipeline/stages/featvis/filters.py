"""The filters of a layer that convolves the input directly, as images (Zeiler & Fergus show these)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def filter_images(conv: nn.Conv2d) -> np.ndarray:
    """uint8 [out_channels, kh, kw, 3]: each filter scaled by its own largest magnitude, 128 = 0;
    one input channel is shown gray, more than three as their first three."""
    w = conv.weight.detach().float().cpu()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    img = (128 + 127 * w / scale).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if img.shape[-1] == 1:
        return img.repeat(3, axis=-1)
    return img[..., :3] if img.shape[-1] >= 3 else np.concatenate([img, np.full(img.shape[:-1] + (3 - img.shape[-1],), 128, np.uint8)], axis=-1)
