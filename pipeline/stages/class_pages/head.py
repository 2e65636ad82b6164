"""Where a classifier's class vectors are: its final Linear (the one whose output is the model's output), and the
cataloged layer whose channels it reads."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inputs.features import source_of
from pipeline.inputs.models import LayerInfo


def final_linear(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, nn.Linear]:
    """(name, module) of the last nn.Linear whose output is the model's output, found by one forward on zeros."""
    called: list[tuple[str, nn.Linear, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, _i, out, name=name: called.append((name, m, out)))
               for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            logits = model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    for name, module, out in reversed(called):
        if isinstance(logits, torch.Tensor) and out.shape == logits.shape and torch.equal(out, logits):
            return name, module
    raise UserError("stage 'class_pages' reads each class's vector from the model's final nn.Linear, but no nn.Linear's "
                    "output is the model's output: the model must end with a Linear classifier (logits [N, classes]).")


def class_layer(layers: list[LayerInfo], channels: int, head: str, asked: str) -> LayerInfo:
    """The cataloged layer Grad-CAM and IBD read: `asked`, or the last layer with a grid and `channels` units."""
    fits = [info for info in layers if info.units == channels and source_of(info.name) is None
            and info.spatial != (1, 1)]
    if asked:
        found = next((info for info in layers if info.name == asked), None)
        if found is None or found not in fits:
            raise UserError(f"job key 'stages.class_pages.layer' = {asked!r} must be a cataloged layer with a feature grid "
                            f"and {channels} units (the channels {head} reads); candidates: "
                            f"{', '.join(i.name for i in fits) or 'none'}.")
        return found
    if not fits:
        raise UserError(f"stage 'class_pages' needs a cataloged layer with a feature grid and {channels} units, the channels "
                        f"the classifier {head} reads (pooled): add it to [model] layers, or name it in "
                        "stages.class_pages.layer.")
    return fits[-1]
