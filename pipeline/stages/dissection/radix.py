"""Exact dissection thresholds in bounded memory: radix selection over float32 bit patterns.

The exact m-th largest value of a unit over the concept data set needs, in one pass, its m largest
values kept (m grows with the data set). Here three passes instead each histogram the values that
share the bits found so far of an order-preserving 32-bit key (12, then 10, then 10 bits): a partial
is a fixed [units, 4096] count table that merges by addition, and after the third pass the key, so
the value, of the m-th largest is known exactly. Used when the kept values would exceed a budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.stages.dissection.packed_counts import pack, unpack
from pipeline.stages.dissection.thresholds import top_count

PASSES = ((20, 12), (10, 10), (0, 10))  # (shift, bits) of the key bucketed by each pass: 32 bits in all
CHUNK = 1 << 22  # values keyed at once: each int32 temporary of a pass is at most 16 MB


@dataclass(frozen=True)
class RadixState:
    """What the passes so far found, per unit: the leading key bits of the m-th largest value
    (`prefix`, above bit `shift + bits` of pass `step`), and its rank among values sharing them."""

    prefix: np.ndarray  # int64 [U]
    need: np.ndarray  # int64 [U], 1 = the largest; unknown (0) before the first pass
    step: int


@dataclass
class RadixPartial:
    """Counts of one pass over some images: values sharing the prefix, per unit and next-bits bucket."""

    hist: np.ndarray  # int64 [U, 2**bits]
    count: int  # values seen per unit (all of them, prefix or not)

    def __getstate__(self) -> dict:
        return {"hist": pack(self.hist), "count": self.count}  # mostly zeros: a shard's values fill few buckets

    def __setstate__(self, state: dict) -> None:
        self.hist, self.count = unpack(state["hist"]), state["count"]


def start(units: int) -> RadixState:
    return RadixState(np.zeros(units, np.int64), np.zeros(units, np.int64), 0)


def empty(units: int, step: int) -> RadixPartial:
    return RadixPartial(np.zeros((units, 1 << PASSES[step][1]), np.int64), 0)


def _signed_keys(x: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order is the order of the float32 values (negative values: every bit but
    the sign flipped); the unsigned key of `RadixState.prefix` and `thresholds` is this plus 2**31."""
    bits = x.contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def compute(acts: torch.Tensor, state: RadixState, chunk: int = CHUNK) -> RadixPartial:
    """One batch `acts` [N, U, h, w] (or [N, U]) counted for pass `state.step`, `chunk` values at a
    time (units in groups), so the pass's temporaries stay bounded whatever the layer and batch."""
    shift, bits = PASSES[state.step]
    mask = (1 << bits) - 1
    n, units = acts.shape[:2]
    x = acts.detach().float().reshape(n, units, -1)
    hist = np.zeros((units, 1 << bits), np.int64)
    group = max(1, chunk // max(1, n * x.shape[2]))
    for u0 in range(0, units, group):
        keys = _signed_keys(x[:, u0:u0 + group])  # int32 [n, c, hw]
        c = keys.shape[1]
        if state.step == 0:  # every value shares the empty prefix; a signed key's top bits, offset to 0..4095
            bucket = ((keys >> shift) + (1 << (31 - shift))) & mask
            index = bucket + (torch.arange(c, device=keys.device, dtype=torch.int32)[None, :, None] << bits)
        else:  # a signed key >> s is the unsigned key >> s less 2**(31 - s)
            prefix = torch.as_tensor(state.prefix[u0:u0 + c] - (1 << (31 - shift - bits)), dtype=torch.int32,
                                     device=keys.device)
            share = (keys >> (shift + bits)) == prefix[None, :, None]
            _, unit, _ = torch.nonzero(share, as_tuple=True)
            index = ((keys[share] >> shift) & mask) + (unit.to(torch.int32) << bits)
        counts = torch.bincount(index.reshape(-1), minlength=c << bits)
        hist[u0:u0 + c] = counts.reshape(c, 1 << bits).cpu().numpy()
    return RadixPartial(hist, int(n * x.shape[2]))


def merge(a: RadixPartial, b: RadixPartial) -> RadixPartial:
    """Exact and order-independent (integer sums)."""
    return RadixPartial(a.hist + b.hist, a.count + b.count)


def select(state: RadixState, partial: RadixPartial, quantile: float) -> RadixState:
    """The next state: which bucket of this pass holds the m-th largest value, m = ceil(quantile * count)."""
    if partial.count == 0:
        raise ValueError("no activations seen: cannot compute thresholds")
    _, bits = PASSES[state.step]
    need = state.need if state.step else np.full(len(state.prefix), top_count(quantile, partial.count), np.int64)
    at_or_above = np.cumsum(partial.hist[:, ::-1], axis=1)[:, ::-1]  # [:, b]: values in buckets >= b
    enough = at_or_above >= need[:, None]
    bucket = enough.shape[1] - 1 - np.argmax(enough[:, ::-1], axis=1)  # the highest bucket reaching m
    rows = np.arange(len(bucket))
    above = at_or_above[rows, bucket] - partial.hist[rows, bucket]
    return RadixState((state.prefix << bits) | bucket, need - above, state.step + 1)


def thresholds(state: RadixState) -> np.ndarray:
    """float32 [U] from the state after the last pass: the full key of each unit's m-th largest value."""
    if state.step != len(PASSES):
        raise ValueError("thresholds are known only after every pass")
    key = state.prefix.astype(np.uint64)
    bits = np.where(key >= 0x80000000, key ^ 0x80000000, ~key & 0xFFFFFFFF).astype(np.uint32)
    return bits.view(np.float32).copy()


def kept_bytes(units: int, quantile: float, total_count: int) -> int:
    """Memory the one-pass exact thresholds keep for a layer: its top m values of every unit."""
    return 4 * units * top_count(quantile, total_count)
