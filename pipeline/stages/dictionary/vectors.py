"""A layer's per-position vectors, streamed: every spatial position (or patch token) of every image is one vector
of the layer's C channels. Never all in memory: a shuffle buffer of a fixed size cuts them into training batches
(a data set whose vectors fit in it is read through the model once, `epochs`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

import torch
from torch import nn

from pipeline.inputs.batches import Batch
from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.models import LayerInfo


def layer_vectors(model: nn.Module, info: LayerInfo, batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
    """Each image batch's vectors [N * H * W, C] (units first: a token layer's patch tokens, its prefix left out).
    Close the generator when done with it: its hook stays on the model until then."""
    seen: list[torch.Tensor] = []
    with tapped(model, [info], lambda _name, grid: seen.append(grid)) as run:
        for batch in batches:
            seen.clear()
            with torch.no_grad():  # entered per batch: a mode held across the yield would hold for the consumer too
                run(batch.inputs)
            grid = seen[0]
            yield grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1]).float().clone()


def shuffled(vectors: Iterable[torch.Tensor], buffer: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of `batch` vectors: `buffer` vectors at a time are pooled and shuffled (seeded), and cut into batches;
    what is left over joins the next pool."""
    gen = torch.Generator().manual_seed(seed)
    pool: list[torch.Tensor] = []
    held = 0
    for v in vectors:
        pool.append(v)
        held += len(v)
        if held < buffer:
            continue
        mixed = torch.cat(pool)
        mixed = mixed[torch.randperm(len(mixed), generator=gen)]
        whole = len(mixed) // batch * batch
        for start in range(0, whole, batch):
            yield mixed[start:start + batch]
        pool, held = [mixed[whole:]], len(mixed) - whole


def epochs(read: Callable[[int], Iterator[torch.Tensor]], buffer: int) -> Iterator[torch.Tensor]:
    """The vectors of epoch after epoch, endless; `read(epoch)` streams one epoch through the model (a generator,
    closed here). When the first epoch's vectors all fit in the buffer they are kept and given again as one block
    each later epoch (the shuffle buffer mixes them), instead of running the model over the images again."""
    kept: list[torch.Tensor] | None = []
    held = 0
    with closing(read(0)) as first:
        for v in first:
            held += len(v)
            if kept is not None and held <= buffer:
                kept.append(v)
            else:
                kept = None
            yield v
    if not held:
        raise ValueError("no vector: none of the images could be read")
    if kept is not None:
        block = torch.cat(kept)
        while True:
            yield block
    epoch = 1
    while True:
        with closing(read(epoch)) as vectors:
            yield from vectors
        epoch += 1
