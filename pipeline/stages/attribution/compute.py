"""One chunk of images on an actor: every request's saliency, Grad-CAM and occlusion maps cut to its example's box,
its occlusion map in the unit's theoretical field (for the empirical field), and, for the sanity check, the rank
correlations of each method's maps with those of the randomized model."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.inputs.batches import Batch, iter_batches
from pipeline.inputs.models import LayerInfo
from pipeline.inputs.receptive_field import ReceptiveField
from pipeline.stages.activations.crops import resize_region
from pipeline.stages.attribution.gradients import ROUND, gradient_maps
from pipeline.stages.attribution.occlusion import field_window, occlusion_maps
from pipeline.stages.attribution.sanity import randomized, rank_correlation
from pipeline.stages.featvis.projections import ProjectionBatch, ProjectionRequest, project
from pipeline.stages.image_chunks import ImageChunk
from pipeline.stages.protocol import Shared, Worker

MAPS = ("saliency", "gradcam", "occlusion")
CHECKED = ("saliency", "gradcam", "deconvnet", "guided")  # the sanity check's methods (occlusion: not re-run)


@dataclass
class AttributionBatch:
    unit: np.ndarray  # int [M]
    rank: np.ndarray  # int [M]
    maps: np.ndarray  # uint8 [M, 3, P, P]: saliency, Grad-CAM's positive part, occlusion's positive part; 255 = max
    windows: np.ndarray  # float32 [M, P, P]: the occlusion map in the unit's theoretical field (0 outside the image)
    correlations: dict[str, np.ndarray]  # method -> float [M] (NaN: not computed)


@dataclass(frozen=True)
class ChunkSettings:
    layers: tuple[LayerInfo, ...]
    earlier: dict  # layer -> the cataloged LayerInfo before it, or None
    fields: dict  # layer -> ReceptiveField
    patch: int
    side: int
    stride: int
    sanity_seed: int | None  # None: no sanity check
    checked: frozenset = frozenset()  # (layer, unit) whose examples the sanity check maps again


def chunk_attribution(worker: Worker, chunk: ImageChunk, shared: Shared) -> dict[str, list[AttributionBatch]]:
    """On an actor: the maps of every request of one chunk of images, by layer."""
    s: ChunkSettings = worker.get(shared)
    model = worker.model()
    batch = next(iter_batches(worker.root, [list(chunk.records)], worker.prep, [], worker.device))
    ids = [int(i) for i in batch.image_ids]
    requests = [r for r in chunk.requests if r.image_id in ids]
    layers = list(s.layers)
    grads = gradient_maps(model, layers, s.earlier, batch.inputs, ids, requests)
    occluded = {}
    for row, image_id in enumerate(ids):
        mine = [r for r in requests if r.image_id == image_id]
        if mine:
            occluded.update(occlusion_maps(model, layers, batch.inputs[row], mine, s.side, s.stride))
    sampled = [r for r in requests if (r.layer, r.unit) in s.checked]
    checks = _sanity(worker, shared, model, s, batch, ids, sampled, grads) if s.sanity_seed is not None and sampled else {}
    out: dict[str, list] = {}
    for layer in {r.layer for r in requests}:
        mine = [r for r in requests if r.layer == layer]
        maps = np.stack([np.stack([_heat(_crop(m, r.box, s.patch), s.patch) for m in
                                   (grads[r].saliency, grads[r].gradcam, torch.from_numpy(occluded[r]))]) for r in mine])
        windows = np.stack([_window(occluded[r], r, s.fields[layer], s.patch) for r in mine])
        correlations = {m: np.array([checks.get((r, m), np.nan) for r in mine], np.float32) for m in CHECKED}
        out[layer] = [AttributionBatch(np.array([r.unit for r in mine]), np.array([r.rank for r in mine]), maps, windows,
                                       correlations)]
    return out


def _crop(values: torch.Tensor | None, box: tuple[int, int, int, int], patch: int) -> torch.Tensor | None:
    if values is None:
        return None
    y0, x0, y1, x1 = box
    return resize_region(values[None, None, y0:y1, x0:x1].float(), patch)[0, 0]


def _heat(values: torch.Tensor | None, patch: int) -> np.ndarray:
    """uint8 [P, P]: the positive part scaled by its maximum (saliency is a magnitude already); 0 everywhere for none."""
    if values is None:
        return np.zeros((patch, patch), np.uint8)
    top = float(values.clamp(min=0).max())
    if top <= 0:
        return np.zeros(values.shape, np.uint8)
    return (255 * values.clamp(min=0) / top).round().to(torch.uint8).cpu().numpy()


def _window(discrepancy: np.ndarray, r: ProjectionRequest, field: ReceptiveField, patch: int) -> np.ndarray:
    h, w = discrepancy.shape
    if field.whole_image or field.around_peak:
        top_left, size = (0, 0), (h, w)
    else:
        top_left = (field.offset[0] + field.jump[0] * r.y, field.offset[1] + field.jump[1] * r.x)
        size = field.size
    window = torch.from_numpy(np.nan_to_num(field_window(discrepancy, top_left, size), nan=0.0))
    return resize_region(window[None, None], patch)[0, 0].numpy().astype(np.float32)


def _projected(model, layers: list[LayerInfo], batch: Batch, ids: list[int], requests: list[ProjectionRequest],
               patch: int) -> dict:
    """The featvis projections of every request, ROUND at a time: each request on its own copy of its image (the
    projections take one request per image and round)."""
    rows = {i: r for r, i in enumerate(ids)}
    found: dict[str, list] = {}
    for start in range(0, len(requests), ROUND):
        chunk = requests[start:start + ROUND]
        copies = Batch(batch.pixels[[rows[r.image_id] for r in chunk]], batch.inputs[[rows[r.image_id] for r in chunk]],
                       np.arange(len(chunk), dtype=np.int64))
        for layer, b in project(model, layers, [copies], [replace(r, image_id=i) for i, r in enumerate(chunk)],
                                patch).items():
            found.setdefault(layer, []).append(b)
    return {layer: ProjectionBatch(np.concatenate([b.unit for b in bs]), np.concatenate([b.rank for b in bs]),
                                   np.concatenate([b.images for b in bs])) for layer, bs in found.items()}


def _sanity(worker: Worker, shared: Shared, model, s: ChunkSettings, batch, ids: list[int],
            requests: list[ProjectionRequest], grads: dict) -> dict[tuple[ProjectionRequest, str], float]:
    """(request, method) -> the rank correlation of its map with the randomized model's, on the example's crop."""
    layers = list(s.layers)
    random = worker.memo("attribution-randomized", shared, lambda _s: randomized(model, s.sanity_seed))
    other = gradient_maps(random, layers, s.earlier, batch.inputs, ids, requests)
    projected = [_projected(m, layers, batch, ids, requests, s.patch) for m in (model, random)]
    out = {}
    for r in requests:
        for method in ("saliency", "gradcam"):
            a, b = getattr(grads[r], method), getattr(other[r], method)
            if a is not None:
                out[(r, method)] = rank_correlation(_crop(a, r.box, s.patch).numpy(), _crop(b, r.box, s.patch).numpy())
    asked = {(r.layer, r.unit, r.rank): r for r in requests}
    for v, method in enumerate(("deconvnet", "guided")):
        for layer, mine in projected[0].items():
            theirs = projected[1][layer]
            where = {(int(u), int(k)): j for j, (u, k) in enumerate(zip(theirs.unit, theirs.rank))}
            for i, (unit, rank) in enumerate(zip(mine.unit, mine.rank)):
                j = where[(int(unit), int(rank))]
                out[(asked[(layer, int(unit), int(rank))], method)] = rank_correlation(
                    _magnitude(mine.images[i, v]), _magnitude(theirs.images[j, v]))
    return out


def _magnitude(image: np.ndarray) -> np.ndarray:
    """A projection's strength per pixel: its distance from 128 (no influence), summed over the colours."""
    return np.abs(image.astype(np.float32) - 128).sum(axis=-1)
