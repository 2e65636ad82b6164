"""The evaluation pass: per class, the images and correct predictions, and the top images by the class's logit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.inputs.batches import global_batches, iter_batches
from pipeline.plan import Shard
from pipeline.stages.protocol import Worker


@dataclass
class EvalPartial:
    images: np.ndarray  # int64 [K] evaluation images per class
    correct: np.ndarray  # int64 [K]
    logit: np.ndarray  # float32 [K, top], -inf where fewer images were seen
    ids: np.ndarray  # int64 [K, top], -1 padding
    predicted: np.ndarray  # int32 [K, top] the predicted class of each top image
    skipped: list[tuple[int, str]]

    @classmethod
    def empty(cls, classes: int, top: int) -> EvalPartial:
        return cls(np.zeros(classes, np.int64), np.zeros(classes, np.int64), np.full((classes, top), -np.inf, np.float32),
                   np.full((classes, top), -1, np.int64), np.full((classes, top), -1, np.int32), [])

    def merged(self, other: EvalPartial) -> EvalPartial:
        """The best `top` of both per class: largest logit first, ties to the smaller image id (any merge order)."""
        top = self.ids.shape[1]
        logit = np.concatenate([self.logit, other.logit], axis=1)
        ids = np.concatenate([self.ids, other.ids], axis=1)
        pred = np.concatenate([self.predicted, other.predicted], axis=1)
        order = np.stack([np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -lg))[:top]
                          for lg, i in zip(logit, ids)])
        pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return EvalPartial(self.images + other.images, self.correct + other.correct, pick(logit), pick(ids), pick(pred),
                           sorted(self.skipped + other.skipped))


def eval_shard(worker: Worker, shard: Shard, classes: int, top: int) -> EvalPartial:
    """On an actor: one shard's images through the whole model."""
    labels = {r.image_id: r.label_index for r in shard.records}
    out = EvalPartial.empty(classes, top)
    skipped: list[tuple[int, str]] = []
    model = worker.model()
    with torch.inference_mode():
        for batch in iter_batches(worker.root, global_batches(shard.records, worker.prep.batch_size), worker.prep,
                                  skipped, worker.device):
            logits = model(batch.inputs)[:, :classes].float().cpu().numpy()
            predicted = logits.argmax(axis=1)
            truth = np.array([labels[int(i)] for i in batch.image_ids])
            np.add.at(out.images, truth, 1)
            np.add.at(out.correct, truth[predicted == truth], 1)
            seen = EvalPartial(np.zeros(classes, np.int64), np.zeros(classes, np.int64), logits.T.copy(),
                               np.tile(batch.image_ids.astype(np.int64), (classes, 1)),
                               np.tile(predicted.astype(np.int32), (classes, 1)), [])
            out = out.merged(seen)  # keeps out's `top` columns
    out.skipped = sorted(skipped)
    return out
