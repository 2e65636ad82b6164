"""Image parametrizations for feature visualization (Olah et al., Distill 2017; as Lucid/Lucent).

`fourier`: a spectrum whose inverse FFT, scaled by 1/frequency, is the image: optimization then
moves all frequencies at a similar pace instead of favouring high-frequency noise. For 3-channel
inputs the channels are decorrelated with the square root of ImageNet's color correlation. A
sigmoid maps the result to [0, 1]. `pixel`: the pixels themselves (through the same sigmoid).
"""

from __future__ import annotations

import numpy as np
import torch

# The square root of ImageNet's color correlation matrix, as Lucid publishes it, normalized so that
# its largest column has norm 1.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_CORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


def init_params(kind: str, channels: int, size: int, rng: np.random.Generator, sd: float = 0.01) -> np.ndarray:
    """One image's parameters, drawn from its own generator: float32 [C, S, S//2+1, 2] or [C, S, S]."""
    shape = (channels, size, size // 2 + 1, 2) if kind == "fourier" else (channels, size, size)
    return (rng.standard_normal(shape) * sd).astype(np.float32)


def _frequency_scale(size: int, decay: float = 1.0) -> torch.Tensor:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx * fx + fy * fy)
    return torch.from_numpy((1.0 / np.maximum(freq, 1.0 / size) ** decay).astype(np.float32))


def to_images(params: torch.Tensor, kind: str, size: int, decorrelate: bool) -> torch.Tensor:
    """[N, C, S, S] images in [0, 1] from a batch of parameters."""
    if kind == "fourier":
        scale = _frequency_scale(size).to(params.device)[None, None, :, :, None]
        spectrum = torch.view_as_complex((params * scale).contiguous())
        raw = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho") / 4.0
    else:
        raw = params
    if decorrelate and raw.shape[1] == 3:
        raw = torch.einsum("nchw,dc->ndhw", raw, torch.from_numpy(COLOR_CORRELATION).to(raw.device))
    return torch.sigmoid(raw)
