"""Each class's top images as the model saw them, and their Grad-CAM; IBD's concept sums over the concept data set."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipeline.inputs.batches import iter_batches
from pipeline.inputs.concept_batches import iter_concept_batches
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo
from pipeline.stages.class_pages.gradcam import grad_cam
from pipeline.stages.class_pages.ibd import ConceptSums
from pipeline.stages.dissection.concept_masks import LabelSpace
from pipeline.stages.protocol import Shared, Worker


def class_pictures(worker: Worker, task: tuple[int, tuple], layer: LayerInfo, size: int) -> tuple[np.ndarray, np.ndarray]:
    """On an actor: (uint8 [top, size, size, 3], float32 [top, h, w]) for one class's top images (ImageRecords)."""
    class_index, records = task
    if not records:  # a class no image scored (an empty data set)
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, *layer.spatial), np.float32)
    batch = next(iter_batches(worker.root, [list(records)], worker.prep, [], worker.device))
    maps = grad_cam(worker.model(), layer, batch.inputs, torch.full((len(records),), class_index, dtype=torch.long))
    images = np.stack([np.asarray(Image.fromarray(p[..., :3] if p.shape[-1] >= 3 else np.repeat(p, 3, axis=-1))
                                  .resize((size, size), Image.BILINEAR)) for p in batch.pixels])
    return images, maps


def concept_shard(worker: Worker, shard, broden: Shared, layer: LayerInfo, space: LabelSpace) -> ConceptSums:
    """On an actor: the layer's feature sums at every concept's positions over one shard of the concept data set."""
    sums = ConceptSums.empty(space.size, layer.units)
    current = []

    def reduce(_name: str, out: torch.Tensor) -> None:
        batch = current[0]
        features = out.float().cpu().numpy()
        for i in range(len(features)):
            sums.add(features[i], batch.masks[i], batch.labels[i], space)

    skipped: list[tuple[int, str]] = []
    with torch.inference_mode(), tapped(worker.model(), [layer], reduce) as run:
        for batch in iter_concept_batches(worker.get(broden), shard.ids, worker.prep, skipped, worker.device, True):
            current[:] = [batch]
            run(batch.inputs)
    return sums
