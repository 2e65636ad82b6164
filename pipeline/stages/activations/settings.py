"""[stages.activations]: how many examples to keep per unit and how to store them."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one


@dataclass(frozen=True)
class ActivationsSettings:
    k: int = 16
    patch_size: int = 64  # pixels of the stored receptive-field crops
    probe_images: int = 256  # images whose per-unit mean activation is kept for `diff` (0: none)


def check(s: ActivationsSettings, key: str) -> None:
    at_least_one({f"{key}.k": s.k, f"{key}.patch_size": s.patch_size})
    if s.probe_images < 0:
        raise UserError(f"job key '{key}.probe_images' must be 0 or more, got {s.probe_images}.")
