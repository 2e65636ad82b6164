"""Windowed outputs whose mapping back to the grid the model's own code fixes.

MaxViT's attention blocks (torchvision's PartitionAttentionLayer) cut a [N, C, H, W] map into windows
[N, G, P, C] with their own `partition_op` (and `partition_swap` for grid attention), run attention and an MLP
on them, then put them back. The positions of a layer inside such a block are found by running those same
two modules on a map of position indices: position (g, p) holds the index it came from, exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.inputs.layouts import Windows


def partition_of(modules: dict[str, nn.Module], name: str, shape: tuple[int, ...]) -> tuple[tuple[int, int], Windows] | None:
    """(the grid (H, W), where each windowed position lies on it) for the output of `shape` ([N, G, P, C]) of
    module `name`, when a module containing it partitions its grid with its own partition modules; else None."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        owner = modules.get(".".join(parts[:end]))
        if not all(hasattr(owner, a) for a in ("partition_op", "partition_swap", "p", "grid_size")):
            continue
        h, w = owner.grid_size
        index = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
        try:
            with torch.no_grad():
                placed = owner.partition_swap(owner.partition_op(index, owner.p))
        except Exception:  # noqa: BLE001 - a partition that does not take this map: not one we can read
            return None
        if tuple(placed.shape[1:3]) != tuple(shape[1:3]) or placed.shape[3] != 1:
            return None
        return (h, w), Windows(tuple(shape[1:3]), tuple(int(v) for v in placed.reshape(-1)))
    return None
