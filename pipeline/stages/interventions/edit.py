"""On a model actor: one task's interventions. The generator runs with a hook on the layer that zeroes units
(ablation) or writes their concept-present mean into a square of the grid (insertion); the segmenter counts the
concept's pixels in each generated image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.generators.latents import latent_inputs
from pipeline.generators.sample import to_pixels
from pipeline.generators.segmenter import build_segmenter, segment
from pipeline.stages.interventions.choose import Task
from pipeline.stages.protocol import Shared, Worker


@dataclass
class Outcome:
    """One task's measures. Curves hold, per n = 1..len(top), concept pixels over the images after the edit."""

    task: Task
    ablate_before: int  # concept pixels in the present images
    ablate_top: np.ndarray  # int64 [n]
    ablate_random: np.ndarray  # int64 [draws, n]
    insert_before: int  # concept pixels in the absent images (0: they are absent)
    insert_top: np.ndarray
    insert_random: np.ndarray
    region_pixels: int  # mask pixels of the inserted square, per image
    values: np.ndarray  # float32 [n]: the top units' concept-present means (what insertion writes)
    strip: np.ndarray  # uint8 [examples, 4, S, S, 3]: present image, ablated; absent image, inserted
    strip_units: tuple[int, int]  # the n of the strip's ablation and of its insertion


class _Editor:
    """Runs the generator with the layer's output edited by `edit` (None: unedited), keeping the layer's output."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model, self.edit, self.seen = model, None, None
        self.handle = dict(model.named_modules())[layer].register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor | None:
        self.seen = out.detach()
        if self.edit is None:
            return None
        return self.edit(out.clone())

    def run(self, z: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        self.edit = edit
        try:
            with torch.inference_mode():
                return self.model(z)
        finally:
            self.edit = None


@contextmanager
def _editor(model: nn.Module, layer: str):
    editor = _Editor(model, layer)
    try:
        yield editor
    finally:
        editor.handle.remove()


def intervene(worker: Worker, task: Task, segmenter: Shared, labels: int) -> Outcome:
    seg = worker.memo("segmenter", segmenter, lambda recipe: build_segmenter(recipe).to(worker.device))
    prep, device = worker.prep, worker.device

    def pixels_of(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        images = to_pixels(out, prep.mean, prep.std).numpy()
        return images, (segment(seg, images, labels, device) == task.number).any(axis=1)

    present = latent_inputs(prep.latents, list(task.present), device)
    absent = latent_inputs(prep.latents, list(task.absent), device)
    with _editor(worker.model(), task.layer.name) as g:
        images, masks = pixels_of(g.run(present)) if len(present) else (None, None)
        acts = g.seen  # the layer on the present images: the units' concept-present means
        mean_of = lambda units: _present_means(acts, masks, units)  # noqa: E731
        count = lambda z, edit: int(pixels_of(g.run(z, edit))[1].sum()) if len(z) else 0  # noqa: E731
        off = _ablation
        on = lambda units: _insertion(units, mean_of(units), task.region)  # noqa: E731
        values, n = mean_of(task.top), len(task.top)
        ablate_top = np.array([count(present, off(task.top[:k])) for k in range(1, n + 1)], np.int64)
        ablate_random = np.array([[count(present, off(d[:k])) for k in range(1, n + 1)] for d in task.random], np.int64)
        insert_before = count(absent, None)
        insert_top = np.array([count(absent, on(task.top[:k])) for k in range(1, n + 1)], np.int64)
        insert_random = np.array([[count(absent, on(d[:k])) for k in range(1, n + 1)] for d in task.random], np.int64)
        before = int(masks.sum()) if masks is not None else 0
        a = int(np.argmin(ablate_top)) + 1 if len(present) else n
        i = int(np.argmax(insert_top)) + 1 if len(absent) else n
        strip = _strip(g, present, absent, images, off(task.top[:a]), on(task.top[:i]), task.examples, prep)
    h, w = task.layer.spatial
    mh, mw = masks.shape[1:] if masks is not None else (0, 0)
    y0, x0, y1, x1 = task.region
    region = round((y1 - y0) * mh / h) * round((x1 - x0) * mw / w) if mh else 0
    return Outcome(task, before, ablate_top, ablate_random, insert_before, insert_top, insert_random, region, values,
                   strip, (a, i))


def _ablation(units: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    index = list(units)

    def edit(out: torch.Tensor) -> torch.Tensor:
        out[:, index] = 0
        return out
    return edit


def _insertion(units: Sequence[int], values: np.ndarray, region: tuple[int, int, int, int]):
    index, (y0, x0, y1, x1) = list(units), region

    def edit(out: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(values), dtype=out.dtype, device=out.device).view(1, -1, 1, 1)
        out[:, index, y0:y1, x0:x1] = v
        return out
    return edit


def _present_means(acts: torch.Tensor, masks: np.ndarray | None, units: Sequence[int]) -> np.ndarray:
    """Each unit's mean activation on the grid cells at least half covered by the concept, over the images."""
    if masks is None or not masks.any():
        return np.zeros(len(units), np.float32)
    cover = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], acts.shape[2:])[:, 0] >= 0.5
    if not cover.any():
        return np.zeros(len(units), np.float32)
    picked = acts[:, list(units)].float().cpu()  # [N, n, h, w]
    return (picked * cover[:, None]).sum(dim=(0, 2, 3)).div(cover.sum()).numpy().astype(np.float32)


def _strip(g: _Editor, present: torch.Tensor, absent: torch.Tensor, images: np.ndarray | None, off, on, examples: int,
           prep) -> np.ndarray:
    """[examples, 4, S, S, 3]: a present image and it ablated; an absent image and it with the units inserted."""
    s = prep.input_size
    strip = np.zeros((examples, 4, s, s, 3), np.uint8)
    draw = lambda out: to_pixels(out, prep.mean, prep.std).numpy()  # noqa: E731
    p, a = present[:examples], absent[:examples]
    for column, (z, edit) in enumerate(((p, None), (p, off), (a, None), (a, on))):
        if len(z):
            pics = images[: len(z)] if column == 0 else draw(g.run(z, edit))
            strip[: len(z), column] = pics if pics.shape[-1] == 3 else np.repeat(pics, 3, axis=-1)
    return strip
