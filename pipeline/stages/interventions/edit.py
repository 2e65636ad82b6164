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


BATCH_IMAGES = 64  # generated images per forward when unit sets are edited together (64 did better than 16 and 256
# on a CPU: tests/benchmarks/bench_interventions.py)


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
    """Runs the generator with the layer's output edited by `edit` (None: unedited, and the output kept as `seen`)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model, self.edit, self.seen = model, None, None
        self.handle = dict(model.named_modules())[layer].register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if self.edit is None:
            self.seen = out.detach().clone()  # an in-place ReLU after the layer would overwrite it
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
    """On an actor: the task's curves (every unit set of every n in batched forwards) and its strips."""
    seg = worker.memo("segmenter", segmenter, lambda recipe: build_segmenter(recipe).to(worker.device))
    prep, device, units, n = worker.prep, worker.device, task.layer.units, len(task.top)

    def concept_of(out: torch.Tensor) -> np.ndarray:
        return (segment(seg, to_pixels(out, prep.mean, prep.std).numpy(), labels, device) == task.number).any(axis=1)

    present = latent_inputs(prep.latents, list(task.present), device)
    absent = latent_inputs(prep.latents, list(task.absent), device)
    sets = [task.top[:k] for k in range(1, n + 1)] + [d[:k] for d in task.random for k in range(1, n + 1)]
    with _editor(worker.model(), task.layer.name) as g:
        masks = concept_of(g.run(present)) if len(present) else None
        means = _present_means(g.seen, masks, range(units)) if masks is not None else np.zeros(units, np.float32)
        ablated = _counts(g, present, sets, lambda m: _edit("ablate", m, means, task.region), units, concept_of)
        inserted = _counts(g, absent, sets, lambda m: _edit("insert", m, means, task.region), units, concept_of)
        insert_before = int(concept_of(g.run(absent)).sum()) if len(absent) else 0
        a = int(np.argmin(ablated[:n])) + 1 if len(present) else n
        i = int(np.argmax(inserted[:n])) + 1 if len(absent) else n
        strip = _strip(g, present, absent, (task.top[:a], task.top[:i]), means, task, prep)
    h, w = task.layer.spatial
    mh, mw = masks.shape[1:] if masks is not None else (0, 0)
    y0, x0, y1, x1 = task.region
    region = round((y1 - y0) * mh / h) * round((x1 - x0) * mw / w) if mh else 0
    return Outcome(task, int(masks.sum()) if masks is not None else 0, ablated[:n], ablated[n:].reshape(-1, n),
                   insert_before, inserted[:n], inserted[n:].reshape(-1, n), region, means[list(task.top)], strip,
                   (a, i))


def _counts(g: _Editor, z: torch.Tensor, sets: list[tuple[int, ...]], edit_of, units: int, concept_of) -> np.ndarray:
    """int64 [sets]: the concept's pixels over the images `z` with each unit set edited, BATCH_IMAGES at a time."""
    if not len(z):
        return np.zeros(len(sets), np.int64)
    found = []
    per = max(1, BATCH_IMAGES // len(z))
    for start in range(0, len(sets), per):
        chunk = sets[start:start + per]
        mask = torch.zeros(len(chunk), units, dtype=torch.bool)
        for j, chosen in enumerate(chunk):
            mask[j, list(chosen)] = True
        hits = concept_of(g.run(z.repeat(len(chunk), *[1] * (z.dim() - 1)), edit_of(mask.repeat_interleave(len(z), 0))))
        found += hits.reshape(len(chunk), -1).sum(axis=1).tolist()
    return np.asarray(found, np.int64)


def _edit(kind: str, mask: torch.Tensor, means: np.ndarray, region: tuple[int, int, int, int]):
    """An edit of the layer's output [B, U, h, w]: per image, the units of mask [B, U] set to 0 everywhere (ablate) or
    to their concept-present mean in the region (insert)."""
    y0, x0, y1, x1 = region

    def edit(out: torch.Tensor) -> torch.Tensor:
        m = mask.to(out.device)[:, :, None, None]
        if kind == "ablate":
            return out.masked_fill(m, 0)
        v = torch.as_tensor(means, dtype=out.dtype, device=out.device).view(1, -1, 1, 1)
        out[:, :, y0:y1, x0:x1] = torch.where(m, v, out[:, :, y0:y1, x0:x1])
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


def _strip(g: _Editor, present: torch.Tensor, absent: torch.Tensor, chosen: tuple[tuple[int, ...], tuple[int, ...]],
           means: np.ndarray, task: Task, prep) -> np.ndarray:
    """[examples, 4, S, S, 3]: a present image and it ablated; an absent image and it with the units inserted."""
    s, units = prep.input_size, task.layer.units
    strip = np.zeros((task.examples, 4, s, s, 3), np.uint8)
    p, a = present[: task.examples], absent[: task.examples]
    for column, (z, kind, edited) in enumerate(((p, None, ()), (p, "ablate", chosen[0]), (a, None, ()),
                                                (a, "insert", chosen[1]))):
        if len(z):
            mask = torch.zeros(len(z), units, dtype=torch.bool)
            mask[:, list(edited)] = True
            pics = to_pixels(g.run(z, _edit(kind, mask, means, task.region) if kind else None), prep.mean, prep.std)
            strip[: len(z), column] = pics.numpy() if pics.shape[-1] == 3 else np.repeat(pics.numpy(), 3, axis=-1)
    return strip
