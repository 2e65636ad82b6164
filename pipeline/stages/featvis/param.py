"""Image parametrizations for feature visualization (Olah et al., Distill 2017; as Lucid/Lucent).

`fourier`: a spectrum whose inverse FFT, scaled by 1/frequency, is the image: optimization then
moves all frequencies at a similar pace instead of favouring high-frequency noise. For 3-channel
inputs the channels are decorrelated with the square root of ImageNet's color correlation. A
sigmoid maps the result to [0, 1]. `pixel`: the pixels themselves (through the same sigmoid).

`chroma` preconditions the color basis: Lucid's matrix gives its two chroma directions 0.27 and
0.13 of the luminance direction's norm, so under Adam (which steps every parameter alike) color
moves 4-7x slower than brightness and saturated-color units lag. Each column is rescaled by
norm**-chroma: 0 is Lucid's basis, 1 gives every direction the same step.
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


def color_basis(chroma: float) -> np.ndarray:
    """The decorrelation matrix with each column scaled by its norm**-chroma (see the module's docstring)."""
    norms = np.linalg.norm(COLOR_CORRELATION, axis=0)
    return (COLOR_CORRELATION * norms[None, :] ** -chroma).astype(np.float32)


def _frequency_scale(size: int, decay: float = 1.0) -> torch.Tensor:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx * fx + fy * fy)
    return torch.from_numpy((1.0 / np.maximum(freq, 1.0 / size) ** decay).astype(np.float32))


class ImageParam:
    """Maps a batch of parameters to [N, C, S, S] images in [0, 1]; built once per batch (its constants on the device)."""

    def __init__(self, kind: str, size: int, channels: int, decorrelate: bool, chroma: float = 0.0,
                 device: str | torch.device = "cpu") -> None:
        self.kind, self.size = kind, size
        self.scale = _frequency_scale(size).to(device)[None, None, :, :, None] if kind == "fourier" else None
        self.color = torch.from_numpy(color_basis(chroma)).to(device) if decorrelate and channels == 3 else None

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            spectrum = torch.view_as_complex((params * self.scale).contiguous())
            raw = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        else:
            raw = params
        if self.color is not None:
            raw = torch.einsum("nchw,dc->ndhw", raw, self.color)
        return torch.sigmoid(raw)

