"""[stages.dictionary]: which layers get a sparse dictionary, its size and sparsity, and how it is trained."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class DictionarySettings:
    layers: tuple[str, ...] = ()  # layers (paths or globs among model.layers) to train a dictionary on
    features: int = 0  # the dictionary's size; 0: 8 x the layer's channels
    k: int = 0  # active features per position; 0: a quarter of the channels, at most 32
    steps: int = 2000  # optimizer steps
    batch: int = 4096  # vectors (positions) per step
    lr: float = 1e-3  # Adam's learning rate
    buffer: int = 65536  # vectors shuffled together before they are cut into batches (the memory bound)
    eval_images: int = 256  # images whose vectors measure the dictionary's quality (not trained on first)
    stability: bool = True  # also train with the next seed, and match the two decoders one-to-one

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if not self.layers:
            raise UserError(f"job key '{key}.layers' is empty: list the layers to train a dictionary on "
                            '(module paths or globs among model.layers, e.g. layers = ["conv4"]).')
        for name in ("steps", "batch", "buffer", "eval_images"):
            if getattr(self, name) < 1:
                raise UserError(f"job key '{key}.{name}' must be at least 1, got {getattr(self, name)}.")
        if self.buffer < self.batch:
            raise UserError(f"job key '{key}.buffer' ({self.buffer}) must hold at least one batch "
                            f"('{key}.batch' = {self.batch}).")
        if self.features < 0 or self.k < 0 or self.lr <= 0:
            raise UserError(f"job keys '{key}.features' and '{key}.k' (0: automatic) and '{key}.lr' (positive) got "
                            f"{self.features}, {self.k}, {self.lr}.")
        if self.features and self.k > self.features:
            raise UserError(f"job key '{key}.k' ({self.k}) is larger than '{key}.features' ({self.features}).")

    def size(self, channels: int) -> tuple[int, int]:
        """(features, k) for a layer of `channels` channels."""
        features = self.features or 8 * channels
        return features, min(features, self.k or max(1, min(32, channels // 4)))
