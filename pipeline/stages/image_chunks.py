"""Requests about single images (a crop, a projection) grouped into chunks of one batch of images.

Images are taken by sorted id, so the split of the work, and with it every result, never depends
on the number of workers; each chunk is a checkpointed shard of its pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.inputs.images import ImageRecord


@dataclass(frozen=True)
class ImageChunk:
    """One batch of images (by sorted id) and the requests asked of them."""

    index: int
    records: tuple[ImageRecord, ...]
    requests: tuple


def image_chunks(records: tuple[ImageRecord, ...], requests: list[Any], batch_size: int) -> list[ImageChunk]:
    """The images that have requests (each request has .image_id), a batch per chunk."""
    by_id = {rec.image_id: rec for rec in records}
    wanted: dict[int, list] = {}
    for req in requests:
        wanted.setdefault(req.image_id, []).append(req)
    ids = sorted(wanted)
    return [ImageChunk(n, tuple(by_id[i] for i in ids[s:s + batch_size]), tuple(r for i in ids[s:s + batch_size] for r in wanted[i]))
            for n, s in enumerate(range(0, len(ids), batch_size))]


def merge_by_layer(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    """Two chunks' results (layer -> list of batches), concatenated per layer."""
    return {layer: a.get(layer, []) + b.get(layer, []) for layer in {*a, *b}}
