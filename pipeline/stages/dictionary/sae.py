"""A TopK sparse autoencoder over a layer's per-position vectors (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"), as `overcomplete`'s TopKSAE and saev train it, in one short module of our own.

Encoder: z = TopK(ReLU(W_enc (s x - b_dec) + b_enc)), decoder: x_hat = (z W_dec + b_dec) / s, with the decoder's
rows kept at unit norm (a feature's direction in the layer's channel space) and s the scale that gives the
training vectors a mean squared norm of C. The loss is the normalized reconstruction error plus AuxK: the k_aux
largest pre-activations of the features that have not fired for a while reconstruct the remaining error, so
dead features get a gradient again. Initialization is seeded (decoder rows random, encoder tied to them);
everything else follows the order of the batches, which the caller fixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.inputs.features import Dictionary, Weights, top_k

AUX_WEIGHT = 1 / 32  # Gao et al.'s alpha
DEAD_AFTER = 20  # batches without firing that make a feature dead (for AuxK)


@dataclass(frozen=True)
class TrainSettings:
    features: int  # the dictionary's size
    k: int  # active features per vector
    steps: int
    lr: float = 1e-3
    seed: int = 0


def train(batches: Iterable[torch.Tensor], settings: TrainSettings, device: str = "cpu") -> Dictionary:
    """A dictionary trained on `settings.steps` batches of vectors [B, C] (an iterable that may hold more)."""
    it = iter(batches)
    first = next(it).to(device, torch.float32)
    channels = first.shape[1]
    gen = torch.Generator().manual_seed(settings.seed)
    decoder = torch.randn(settings.features, channels, generator=gen)
    decoder = (decoder / decoder.norm(dim=1, keepdim=True)).to(device)
    scale = float(np.sqrt(channels / max(float(first.square().sum(dim=1).mean()), 1e-12)))
    w = Weights(decoder.clone().requires_grad_(True), torch.zeros(settings.features, device=device, requires_grad=True),
                 decoder.requires_grad_(True), (first.mean(dim=0) * scale).requires_grad_(True), settings.k, scale)
    params = [w.encoder, w.encoder_bias, w.decoder, w.decoder_bias]
    opt = torch.optim.Adam(params, lr=settings.lr)
    idle = torch.zeros(settings.features, dtype=torch.int64, device=device)  # batches since each feature last fired
    k_aux = max(1, min(settings.features - settings.k, channels // 2))
    batch = first
    for step in range(settings.steps):
        if step:
            batch = next(it).to(device, torch.float32)
        opt.zero_grad(set_to_none=True)
        loss, fired = _loss(w, batch, idle >= DEAD_AFTER, k_aux)
        loss.backward()
        opt.step()
        with torch.no_grad():
            w.decoder /= w.decoder.norm(dim=1, keepdim=True).clamp(min=1e-12)
        idle = torch.where(fired, 0, idle + 1)
    return Dictionary(*(t.detach().cpu().numpy().astype(np.float32) for t in params), settings.k, scale)


def _loss(w: Weights, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized MSE + AuxK, bool [F] the features that fired on the batch)."""
    scaled = x * w.scale
    pre = (scaled - w.decoder_bias) @ w.encoder.T + w.encoder_bias
    z = top_k(torch.relu(pre), w.k)
    recon = z @ w.decoder + w.decoder_bias
    spread = (scaled - scaled.mean(dim=0)).square().sum(dim=1).mean().clamp(min=1e-12)
    error = scaled - recon
    loss = error.square().sum(dim=1).mean() / spread
    if bool(dead.any()):
        aux = top_k(torch.relu(pre).masked_fill(~dead, 0.0), min(k_aux, int(dead.sum())))
        residual = error.detach()
        loss = loss + AUX_WEIGHT * (residual - aux @ w.decoder).square().sum(dim=1).mean() / spread
    return loss, (z > 0).any(dim=0)
