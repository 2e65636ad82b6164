"""Loss recovered: the model's loss and accuracy when a layer's output is replaced by its dictionary's
reconstruction, between the model as it is (all of the loss recovered) and the layer replaced by its mean vector
at every position (none of it), as the SAE literature reports it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.layouts import units_first
from pipeline.inputs.models import LayerInfo

Replace = Callable[[torch.Tensor], torch.Tensor]  # [M, C] vectors -> [M, C]


@dataclass
class Scores:
    """Summed cross-entropy and correct predictions over `images`, for the model as it is, with the layer's output
    reconstructed, and with it replaced by the mean vector."""

    images: int = 0
    loss: np.ndarray = None  # float64 [3]: original, reconstructed, mean
    correct: np.ndarray = None  # int64 [3]

    def __post_init__(self) -> None:
        self.loss = np.zeros(3) if self.loss is None else self.loss
        self.correct = np.zeros(3, np.int64) if self.correct is None else self.correct

    def summary(self) -> dict[str, float | None]:
        if not self.images:
            return {"loss_recovered": None, "accuracy": None, "accuracy_reconstructed": None}
        loss = self.loss / self.images
        lost = loss[2] - loss[0]
        return {"loss_recovered": float((loss[2] - loss[1]) / lost) if lost > 0 else None,
                "accuracy": float(self.correct[0] / self.images),
                "accuracy_reconstructed": float(self.correct[1] / self.images)}


def scores(model: nn.Module, info: LayerInfo, batches: Iterable[Batch], labels: dict[int, int],
           reconstruct: Replace, mean: torch.Tensor) -> Scores:
    """The three ways of running the model over the labelled images of `batches` (`labels`: image id -> class)."""
    out = Scores()
    module = dict(model.named_modules())[info.name]
    with torch.inference_mode():
        for batch in batches:
            keep = [i for i, image in enumerate(batch.image_ids.tolist()) if int(image) in labels]
            if not keep:
                continue
            x = batch.inputs[keep]
            y = torch.tensor([labels[int(batch.image_ids[i])] for i in keep], device=x.device)
            for way, replace in enumerate((None, reconstruct, lambda v: mean.expand_as(v))):
                with _replaced(module, info, replace):
                    logits = model(x)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] <= int(y.max()):
                    return Scores()  # not a classifier of these classes: nothing to score
                out.loss[way] += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                out.correct[way] += int((logits.argmax(dim=1) == y).sum())
            out.images += len(keep)
    return out


@contextmanager
def _replaced(module: nn.Module, info: LayerInfo, replace: Replace | None):
    """While inside, every position's vector of the module's output is replace(vector) (prefix tokens kept)."""
    def hook(_m, _i, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        grid, _ = units_first(output, info.layout, info.spatial, info.prefix)  # a view into `output`
        vectors = grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])
        grid.copy_(replace(vectors).reshape(grid.shape[0], grid.shape[2], grid.shape[3], -1).permute(0, 3, 1, 2))
        return output

    handle = module.register_forward_hook(hook) if replace is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
