"""Count tables as the dissection's partials are pickled: only their nonzero cells when those are few.

Every finished shard's partial is pickled twice, to reach the driver and to be checkpointed under the
catalog's work folder. At Broden's size (resnet18 layer1-layer4, 960 units, shards of 256 images)
a radix pass's first table is [960, 4096] int64, 30 MB a shard, of which about 3% is nonzero: 7.4 GB
of checkpoints for 248 shards, where the nonzero cells take 0.7 MB a shard.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INT32_MAX = np.iinfo(np.int32).max


def pack(counts: np.ndarray) -> tuple[Any, ...]:
    """A compact, lossless form of an int64 count table: ("sparse", shape, flat positions, counts) when
    fewer than a third of the cells are nonzero, else ("dense", table); int32 wherever the values fit."""
    counts = np.asarray(counts)
    where = np.flatnonzero(counts)
    if 3 * len(where) < counts.size:
        values = counts.reshape(-1)[where]
        return ("sparse", counts.shape, _narrow(where), _narrow(values))
    return ("dense", _narrow(counts))


def unpack(packed: tuple[Any, ...] | np.ndarray) -> np.ndarray:
    """The int64 table `pack` was given (a plain array, as checkpoints written before packing hold, as it is)."""
    if isinstance(packed, np.ndarray):
        return packed
    if packed[0] == "sparse":
        _, shape, where, values = packed
        out = np.zeros(int(np.prod(shape, dtype=np.int64)), np.int64)
        out[where] = values
        return out.reshape(shape)
    return packed[1].astype(np.int64)


def _narrow(a: np.ndarray) -> np.ndarray:
    """int32 when every value fits, else int64."""
    if a.size and (a.max() > _INT32_MAX or a.min() < -_INT32_MAX):
        return a.astype(np.int64)
    return a.astype(np.int32)
