"""A generator job's segmenter ([concepts] segmenter): a module from images to per-pixel concept labels.

The contract (README, "Dissecting a generator"): the module has `labels`, a list of (concept name, category)
pairs, label number k + 1 being labels[k]; forward takes float RGB [N, 3, H, W] in [0, 1] and returns integer
label numbers [N, h, w] or [N, planes, h, w] (0: no label; planes let a pixel carry several, as Broden's parts do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.models import ModelRecipe, build_model, recipe_from_config
from pipeline.job.config import JobConfig, ModelConfig


@dataclass(frozen=True)
class SegmenterSpec:
    """How to rebuild the segmenter anywhere, and its labels."""

    recipe: ModelRecipe
    labels: tuple[tuple[str, str], ...]  # (concept name, category) of label numbers 1..L

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(category for _, category in self.labels))


def segmenter_spec(job: JobConfig) -> tuple[SegmenterSpec, nn.Module]:
    """The job's segmenter, built once on the driver to read and check its labels."""
    c = job.concepts
    recipe = recipe_from_config(ModelConfig(factory=c.segmenter, weights=c.segmenter_weights))
    module = build_segmenter(recipe)
    labels = getattr(module, "labels", None)
    ok = isinstance(labels, (list, tuple)) and labels and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, str) and v for v in p) for p in labels)
    if not ok:
        raise UserError(f"concepts.segmenter {c.segmenter}: the module needs `labels`, a list of (concept name, "
                        f"category) string pairs (label number k + 1 is labels[k]); found {labels!r}.")
    names = [name for name, _ in labels]
    if len(set(names)) != len(names):
        raise UserError(f"concepts.segmenter {c.segmenter}: its labels repeat a concept name; name each once.")
    wanted = c.categories
    if wanted is not None and (missing := sorted(set(wanted) - {cat for _, cat in labels})):
        raise UserError(f"concepts.categories lists {missing}, which no label of concepts.segmenter {c.segmenter} "
                        "belongs to; drop them or leave categories out.")
    return SegmenterSpec(recipe, tuple((str(n), str(cat)) for n, cat in labels)), module


def build_segmenter(recipe: ModelRecipe) -> nn.Module:
    return build_model(recipe)


def segment(module: nn.Module, pixels: np.ndarray | torch.Tensor, labels: int, device: str = "cpu") -> np.ndarray:
    """int32 [N, planes, h, w] label numbers of uint8 images [N, H, W, 3]; a UserError when the output breaks the
    contract (so a wrong segmenter never becomes silent labels)."""
    x = torch.as_tensor(np.asarray(pixels)).to(device).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        out = module(x)
    if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4) or out.shape[0] != len(x) \
            or out.dtype.is_floating_point or out.dtype == torch.bool:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"concepts.segmenter returned {got} for {len(x)} images: it must return integer label numbers "
                        "[N, h, w] or [N, planes, h, w].")
    out = out[:, None] if out.dim() == 3 else out
    low, high = int(out.min()), int(out.max())
    if low < 0 or high > labels:
        raise UserError(f"concepts.segmenter returned label numbers {low}..{high}; they must lie in 0..{labels} "
                        f"(0: none, k + 1: labels[k]).")
    return out.to(torch.int32).cpu().numpy()
