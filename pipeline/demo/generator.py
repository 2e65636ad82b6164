"""The demo generator: a small decoder from a 32-number latent to a 32 px concept-world image, trained without an
adversary as Generative Latent Optimization does (Bojanowski et al. 2018): one learned code per training image,
optimized with the decoder to reconstruct it. A Gaussian fitted to the codes is folded into the module, so the job's
latents are N(0, I): a latent z is decoded from mean + L z (L L^T = the codes' covariance).

Layers for job files: conv1 (8 x 8), conv2 (16 x 16), conv3 (32 x 32), each a Conv2d after a 2x upsampling,
then an in-place ReLU; `out` makes RGB in [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.demo.training_cache import train_cached
from pipeline.demo.world_tensors import WorldTensors, world_tensors

ARCHITECTURE = "WorldDecoder-v1"
LATENT, WIDTH = 32, 64


class WorldDecoder(nn.Module):
    def __init__(self, latent: int = LATENT, width: int = WIDTH) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(latent))
        self.register_buffer("scale", torch.eye(latent))
        self.width = width
        self.fc = nn.Linear(latent, width * 16)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1, self.relu1 = nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)
        self.conv2, self.relu2 = nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(inplace=True)
        self.conv3, self.relu3 = nn.Conv2d(width // 2, width // 4, 3, padding=1), nn.ReLU(inplace=True)
        self.out = nn.Conv2d(width // 4, 3, 3, padding=1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(code)).view(len(code), self.width, 4, 4)
        x = self.relu1(self.conv1(self.up(x)))
        x = self.relu2(self.conv2(self.up(x)))
        x = self.relu3(self.conv3(self.up(x)))
        return torch.tanh(self.out(x))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.mean + z @ self.scale.T)


def world_decoder() -> nn.Module:
    """Factory for job files: factory = "pipeline.demo.generator:world_decoder"."""
    return WorldDecoder()


def _fit(data: WorldTensors, epochs: int, seed: int) -> tuple[WorldDecoder, float]:
    """Decoder and codes by Adam on the squared error; codes kept in the unit ball (GLO's projection)."""
    torch.manual_seed(seed)
    x = data.images[~data.held].contiguous()
    model = WorldDecoder()
    codes = nn.Parameter(torch.randn(len(x), LATENT) * 0.3)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 2e-3}, {"params": [codes], "lr": 1e-2}])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.mse_loss(model.decode(codes[idx]), x[idx]).backward()
            opt.step()
            with torch.no_grad():
                codes[idx] /= codes[idx].norm(dim=1, keepdim=True).clamp(min=1)
    with torch.no_grad():
        c = codes.detach().double()
        cov = torch.cov(c.T) + 1e-4 * torch.eye(LATENT, dtype=torch.float64)
        model.mean.copy_(c.mean(0).float())
        model.scale.copy_(torch.linalg.cholesky(cov).float())
    with torch.no_grad():
        return model.eval(), float(F.mse_loss(model.decode(codes), x))


def _heldout_error(model: WorldDecoder, data: WorldTensors, seed: int, steps: int = 100) -> float:
    """How well the decoder can draw images it never saw: the squared error of codes fitted to them alone."""
    x = data.images[data.held]
    torch.manual_seed(seed)
    codes = nn.Parameter(model.mean.repeat(len(x), 1).clone())
    opt = torch.optim.Adam([codes], lr=5e-2)
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model.decode(codes), x).backward()
        opt.step()
    with torch.no_grad():
        return float(F.mse_loss(model.decode(codes), x))


def train_demo_generator(world: Path, weights: Path, *, epochs: int, seed: int) -> dict:
    """Train WorldDecoder on the world's train split into `weights`, unless the cache says it is there."""
    data, doc = world_tensors(Path(world))

    def train() -> tuple[nn.Module, dict]:
        start = time.perf_counter()
        model, train_error = _fit(data, epochs, seed)
        return model, {"train_mse": train_error, "heldout_mse": _heldout_error(model, data, seed),
                       "seconds": time.perf_counter() - start}

    return train_cached(Path(weights), {"world": doc, "epochs": epochs, "seed": seed, "architecture": ARCHITECTURE,
                                        "data": data.recipe}, train)
