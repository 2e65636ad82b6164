"""GAN Dissection's threshold rule ([stages.dissection] threshold = "iqr"): per unit the level that maximizes the
information quality ratio IQR = I(A; C) / H(A, C) between its thresholded, upsampled map A and a concept's mask C,
over every concept; the tally then scores every concept at that level (as CSAILVision/gandissect's `collect_iqr`
and `collect_bincounts`).

Two passes over the concept shards, both exact merges: a seeded sample of every unit's values (LEVELS candidate
levels around its top 0.1% .. 100% quantiles, log-spaced as gandissect's), then per (unit, concept, level) the pixel
counts of the 2 x 2 table. As gandissect, a pair counts only where the level is positive, the concept covers at
least 0.1% of the pixels and unit and concept agree on more than 80% of them; a unit with no such pair keeps its
highest level. Maps are upsampled with bilinear interpolation (F.interpolate); image-level labels are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.inputs.broden import Broden
from pipeline.inputs.concept_batches import iter_concept_batches
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.dissection.concept_masks import LabelSpace, encode_masks
from pipeline.stages.protocol import Shared, Worker

LEVELS = 64
FRACS = np.logspace(-3, 0, LEVELS)  # the share of a unit's values above each candidate level
SAMPLED = 64  # positions per image whose values every unit contributes to the level sample


@dataclass
class IqrPartial:
    layers: dict[str, np.ndarray]  # pass 1: float32 [U, samples]; pass 2: int64 [U, L + 1, LEVELS + 1] counts by
    # label index + 1 (0: every pixel) and by k, how many levels the pixel's value exceeds
    labels: np.ndarray | None = None  # pass 2: int64 [L] label pixels
    pixels: int = 0  # pass 2: mask pixels seen
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


def merge(a: IqrPartial, b: IqrPartial) -> IqrPartial:
    """Samples join (a multiset: their quantiles do not depend on the order), counts add."""
    first = next(iter(a.layers.values()), None)
    join = (lambda x, y: np.concatenate([x, y], axis=1)) if first is None or first.dtype != np.int64 else np.add
    labels = b.labels if a.labels is None else a.labels if b.labels is None else a.labels + b.labels
    return IqrPartial({name: join(v, b.layers[name]) for name, v in a.layers.items()}, labels, a.pixels + b.pixels,
                      a.images + b.images, sorted(a.skipped + b.skipped))


def empty_sample(layers: list[LayerInfo]) -> IqrPartial:
    return IqrPartial({info.name: np.zeros((info.units, 0), np.float32) for info in layers})


def empty_counts(layers: list[LayerInfo], space: LabelSpace) -> IqrPartial:
    return IqrPartial({info.name: np.zeros((info.units, space.size + 1, LEVELS + 1), np.int64) for info in layers},
                      np.zeros(space.size, np.int64))


def check_mask_sizes(broden: Broden) -> None:
    """The IQR counts read a batch's masks at one size: refuse a concept data set of several (on the driver)."""
    sizes = sorted({tuple(image.mask_size) for image in broden.images})
    if len(sizes) > 1:
        raise UserError(f"[stages.dissection] threshold = \"iqr\" needs one mask size (index.csv sh, sw) for every "
                        f"concept image; {broden.root} has {len(sizes)}: {sizes[:4]}. Use threshold = \"quantile\" with it.")


def sample_shard(worker: Worker, shard, broden: Shared, layers: list[LayerInfo]) -> IqrPartial:
    """Pass 1, on an actor: SAMPLED seeded positions of every image (by its id), every unit's values there."""
    out: dict[str, list] = {info.name: [] for info in layers}
    skipped: list[tuple[int, str]] = []
    images = 0
    current: list[np.ndarray] = []

    def keep(name: str, maps: torch.Tensor) -> None:
        flat = maps.flatten(2).float().cpu().numpy()  # [N, U, h*w]
        for i, image_id in enumerate(current[0]):
            picks = np.random.default_rng([int(image_id)]).permutation(flat.shape[2])[:SAMPLED]
            out[name].append(flat[i][:, np.sort(picks)])

    with torch.inference_mode(), tapped(worker.model(), layers, keep) as run:
        for batch in iter_concept_batches(worker.get(broden), shard.ids, worker.prep, skipped, worker.device, False):
            current[:] = [batch.image_ids]
            run(batch.inputs)
            images += len(batch.image_ids)
    return IqrPartial({name: np.concatenate(v, axis=1) if v else np.zeros((info.units, 0), np.float32)
                       for (name, v), info in zip(out.items(), layers)}, images=images, skipped=sorted(skipped))


def levels_of(sample: np.ndarray) -> np.ndarray:
    """float32 [U, LEVELS]: each unit's candidate levels, ascending: midpoints of consecutive quantiles, so that a
    unit of few distinct values (a binary mask) gets levels between them, where `> level` can separate them."""
    if sample.shape[1] == 0:
        return np.zeros((sample.shape[0], LEVELS), np.float32)
    q = np.quantile(sample, np.sort(1 - np.append(FRACS, 0.0)), axis=1).T  # [U, LEVELS + 1]
    return ((q[:, :-1] + q[:, 1:]) / 2).astype(np.float32)


def count_shard(worker: Worker, shard, broden: Shared, layers: list[LayerInfo], levels: dict[str, np.ndarray],
                space: LabelSpace) -> IqrPartial:
    """Pass 2, on an actor: per unit, label (0: none) and k = how many levels a pixel's value exceeds, the pixels."""
    result = empty_counts(layers, space)
    skipped: list[tuple[int, str]] = []
    current: list = []

    def count(name: str, maps: torch.Tensor) -> None:
        pixel, size = current
        up = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)  # [N, U, sh, sw]
        n, units = up.shape[:2]
        values = up.permute(1, 0, 2, 3).reshape(units, -1)
        bounds = torch.tensor(np.ascontiguousarray(levels[name]), device=values.device)
        k = torch.searchsorted(bounds, values.contiguous())  # [U, N*S]
        bins = (space.size + 1) * (LEVELS + 1)
        base = torch.arange(units, device=values.device)[:, None] * bins + k
        keys = [base.reshape(-1)]  # column 0: every pixel, once
        for plane in range(pixel.shape[1]):
            on = pixel[:, plane] > 0
            keys.append((base[:, on] + pixel[on, plane][None] * (LEVELS + 1)).reshape(-1))
        result.layers[name] += torch.bincount(torch.cat(keys), minlength=units * bins).view(
            units, space.size + 1, LEVELS + 1).cpu().numpy()

    with torch.inference_mode(), tapped(worker.model(), layers, count) as run:
        for batch in iter_concept_batches(worker.get(broden), shard.ids, worker.prep, skipped, worker.device, True):
            size = tuple(batch.mask_sizes[0])  # one size for every image: checked on the driver (check_mask_sizes)
            encoded = encode_masks(batch.masks, batch.labels, space, size, "image")
            pixel = torch.from_numpy(encoded.pixel).to(batch.inputs.device)  # [N, S, P], label index + 1
            pixel = pixel.reshape(-1, pixel.shape[-1])
            current[:] = [pixel, size]
            run(batch.inputs)
            labelled = np.bincount(encoded.pixel.reshape(-1), minlength=space.size + 1)[1:]
            result.labels += labelled
            result.pixels += len(batch.image_ids) * size[0] * size[1]
            result.images += len(batch.image_ids)
    result.skipped = sorted(skipped)
    return result


def thresholds_of(counts: np.ndarray, labels: np.ndarray, pixels: int, levels: np.ndarray) -> np.ndarray:
    """float32 [U]: per unit, the level of its best (concept, level) pair by IQR."""
    above = counts[:, :, ::-1].cumsum(axis=2)[:, :, ::-1]  # [U, L + 1, LEVELS + 1]: pixels with k >= index
    isect = above[:, 1:, 1:] / max(pixels, 1)  # [U, L, LEVELS]: over level b <=> k >= b + 1
    pred = above[:, :1, 1:] / max(pixels, 1)
    truth = (labels / max(pixels, 1))[None, :, None]
    cells = np.stack([isect, pred - isect, truth - isect, 1 - (truth + pred - isect)]).clip(0, 1)  # 00, 01, 10, 11
    rows, cols = (cells[0] + cells[1], cells[2] + cells[3]), (cells[0] + cells[2], cells[1] + cells[3])
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = sum(np.nan_to_num(c * np.log(c / (rows[j // 2] * cols[j % 2]))) for j, c in enumerate(cells)).clip(0)
        je = -sum(np.nan_to_num(c * np.log(c)) for c in cells)
        iqr = np.nan_to_num(mi / je)
    iqr[:, truth[0, :, 0] < 1e-3] = 0
    iqr[(cells[0] + cells[3]) <= 0.8] = 0
    iqr[np.broadcast_to(levels[:, None, :] <= 0, iqr.shape)] = 0
    flat = iqr.reshape(len(iqr), -1)
    best = flat.argmax(axis=1) % LEVELS
    return np.where(flat.max(axis=1) > 0, levels[np.arange(len(levels)), best], levels[:, -1]).astype(np.float32)
