"""The k best (or worst) images of each unit, with where in the map: kept per batch, merged across shards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD_ID = np.iinfo(np.int64).max  # empty top-k slot; sorts after every real image id


@dataclass
class Ranked:
    """The k best (value, image, position) per unit, best first: [units, k] each."""

    value: np.ndarray  # float32
    image_id: np.ndarray  # int64, PAD_ID where empty
    position: np.ndarray  # int64 flat index into the layer's H*W map

    @classmethod
    def empty(cls, units: int, k: int, largest: bool) -> Ranked:
        fill = -np.inf if largest else np.inf
        return cls(np.full((units, k), fill, np.float32), np.full((units, k), PAD_ID, np.int64), np.zeros((units, k), np.int64))

    def merged(self, other: Ranked, largest: bool) -> Ranked:
        """The k best of both; ties go to the smaller image id."""
        k = self.value.shape[1]
        value = np.concatenate([self.value, other.value], axis=1)
        image_id = np.concatenate([self.image_id, other.image_id], axis=1)
        position = np.concatenate([self.position, other.position], axis=1)
        order = np.lexsort((image_id, -value if largest else value), axis=1)[:, :k]
        return Ranked(*(np.take_along_axis(a, order, axis=1) for a in (value, image_id, position)))


def batch_ranked(extreme: torch.Tensor, position: torch.Tensor, image_ids: np.ndarray, k: int, largest: bool) -> Ranked:
    """The batch's k best images per unit from every image's extreme [N, C] and its position [N, C]; a stable sort
    keeps ties in (ascending) image-id order."""
    n, c = extreme.shape
    order = torch.sort(extreme.T, dim=1, descending=largest, stable=True).indices[:, :k]  # [C, k'] batch rows
    units = torch.arange(c, device=extreme.device)[:, None]
    return Ranked(extreme[order, units].cpu().numpy(), image_ids[order.cpu().numpy()],
                  position[order, units].cpu().numpy().astype(np.int64))
