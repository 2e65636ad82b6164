"""A sparse dictionary's features, read as a layer of their own: `<layer>..features`.

The dictionary stage trains a dictionary on a layer's per-position vectors; its features are then units like
the layer's channels. On the model actors a `FeatureEncoder` is attached to the model (`FeatureLayer.install`):
a hook on the source layer encodes its output at every position into the feature codes, in the source's own
layout, so every stage that hooks a layer reads the features the same way (`layer_modules`). When another hook
changes the codes (Shapley removing features), the source's output changes by the codes' decoder contribution:
a feature set to 0 has its decoder direction subtracted at every position.

A module path can never hold an empty segment, so a name ending in "..features" is never a module's (the name is
part of the catalog's contract: catalog_schema.layout.feature_layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from catalog_schema.layout import feature_layer, source_of
from pipeline.inputs.layouts import CHANNELS_LAST

__all__ = ["Dictionary", "FeatureEncoder", "FeatureLayer", "Weights", "feature_layer", "layer_modules", "source_of",
           "top_k"]


@dataclass(frozen=True)
class Dictionary:
    """A trained dictionary, as numpy arrays (what the catalog stores and the workers receive).
    Codes: z = TopK(ReLU(W_enc (s x - b_dec) + b_enc)); reconstruction: x_hat = (z W_dec + b_dec) / s."""

    encoder: np.ndarray  # float32 [F, C]
    encoder_bias: np.ndarray  # float32 [F]
    decoder: np.ndarray  # float32 [F, C], unit rows: each feature's direction
    decoder_bias: np.ndarray  # float32 [C], in scaled units
    k: int
    scale: float  # s: vectors are multiplied by it before encoding

    @property
    def features(self) -> int:
        return len(self.decoder)

    def tensors(self, device: str | torch.device = "cpu") -> Weights:
        return Weights(*(torch.as_tensor(a, device=device) for a in (self.encoder, self.encoder_bias, self.decoder,
                                                                    self.decoder_bias)), self.k, self.scale)


@dataclass
class Weights:
    encoder: torch.Tensor
    encoder_bias: torch.Tensor
    decoder: torch.Tensor
    decoder_bias: torch.Tensor
    k: int
    scale: float

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C] vectors -> [..., F] pre-activations (Lucid's direction objective for a feature)."""
        return (x * self.scale - self.decoder_bias) @ self.encoder.T + self.encoder_bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., F] codes: the k largest positive pre-activations of each vector, the rest 0."""
        return top_k(torch.relu(self.pre(x)), self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[..., F] codes -> [..., C] reconstructions, in the layer's own units."""
        return (z @ self.decoder + self.decoder_bias) / self.scale


def top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """`values` with all but the k largest of each row set to 0 (ties: the lower index)."""
    kept = torch.topk(values, k, dim=-1, sorted=False)
    return torch.zeros_like(values).scatter_(-1, kept.indices, kept.values)


class FeatureEncoder(nn.Module):
    """The codes of a layer's output, in the layer's own layout (the features on the channels' axis). Called by the
    hook `FeatureLayer.install` puts on the source layer; its forward hooks are how stages read and change them."""

    def __init__(self, name: str, layout: str, dictionary: Dictionary) -> None:
        super().__init__()
        self.layer_name, self.layout, self.k, self.scale = name, layout, dictionary.k, dictionary.scale
        for key in ("encoder", "encoder_bias", "decoder", "decoder_bias"):
            self.register_buffer(key, torch.tensor(np.asarray(getattr(dictionary, key), np.float32)))
        self.clean: torch.Tensor | None = None  # the last forward's codes before any hook changed them

    def weights(self) -> Weights:
        return Weights(self.encoder, self.encoder_bias, self.decoder, self.decoder_bias, self.k, self.scale)

    def _last(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(1, -1) if self.layout not in CHANNELS_LAST else x

    def _back(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(-1, 1) if self.layout not in CHANNELS_LAST else x

    def pre_units_first(self, grid: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] (the source units first) -> [N, F, H, W] pre-activations: featvis's objective."""
        return self.weights().pre(grid.movedim(1, -1)).movedim(-1, 1)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        self.clean = self._back(self.weights().encode(self._last(out).float())).to(out.dtype)
        return self.clean

    def on_source(self, _module: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor | None:
        """The source layer's forward hook: encode its output; where a hook changed the codes, the output changed
        by the codes' decoder contribution."""
        if not self._forward_hooks:  # nothing reads or changes the features in this forward
            return None
        codes = self(out)
        clean, self.clean = self.clean, None  # not held past the forward (a batch's codes can be large)
        if codes is clean:
            return None
        change = (self._last(codes) - self._last(clean)).float() @ self.decoder / self.scale
        return out + self._back(change).to(out.dtype)


@dataclass(frozen=True)
class FeatureLayer:
    """What the model actors attach to their model for the stages after the dictionary stage: one feature layer."""

    name: str  # feature_layer(the layer it reads)
    layout: str  # the source's
    dictionary: Dictionary

    def install(self, model: nn.Module) -> None:
        if not hasattr(model, "catalog_features"):
            model.add_module("catalog_features", nn.ModuleList())
        encoder = FeatureEncoder(self.name, self.layout, self.dictionary)
        model.catalog_features.append(encoder)
        model.get_submodule(source_of(self.name)).register_forward_hook(encoder.on_source)


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> module, and each installed feature layer's name -> its encoder."""
    modules = dict(model.named_modules())
    modules.update({m.layer_name: m for m in modules.values() if isinstance(m, FeatureEncoder)})
    return modules
