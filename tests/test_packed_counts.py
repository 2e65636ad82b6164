"""Dissection partials pickle their count tables compactly and come back identical."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.stages.dissection import radix
from pipeline.stages.dissection.packed_counts import pack, unpack
from pipeline.stages.dissection.tally import TallyPartial


@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_pack_round_trips_any_table(density):
    rng = np.random.default_rng(0)
    table = np.where(rng.random((37, 411)) < density, rng.integers(1, 1 << 20, (37, 411)), 0).astype(np.int64)
    back = unpack(pack(table))
    assert back.dtype == np.int64 and back.shape == table.shape and np.array_equal(back, table)


def test_counts_past_int32_and_empty_tables_survive():
    big = np.zeros((3, 5), np.int64)
    big[1, 2] = 3 * 2**31 + 7  # a Broden-sized layer's total can pass 2**31
    dense = np.full((2, 2), 2**40, np.int64)
    for table in (big, dense, np.zeros((0, 4), np.int64), np.zeros((4, 0), np.int64)):
        assert np.array_equal(unpack(pack(table)), table) and unpack(pack(table)).shape == table.shape


def test_a_sparse_radix_partial_pickles_small_and_equal():
    # a Broden-sized shard's first radix table: [960, 4096], about 3% of its cells nonzero
    rng = np.random.default_rng(1)
    hist = np.zeros((960, 4096), np.int64)
    for u in range(960):
        start = rng.integers(1900, 2100)
        hist[u, start:start + 120] = rng.integers(0, 50_000, 120)
    part = radix.RadixPartial(hist, 802_816)
    data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < hist.nbytes / 20  # 31 MB as it is
    back = pickle.loads(data)
    assert back.count == part.count and np.array_equal(back.hist, hist) and back.hist.dtype == np.int64


def test_tally_partial_pickles_equal_and_old_checkpoints_still_load():
    rng = np.random.default_rng(2)
    part = TallyPartial(rng.integers(0, 9, (64, 300)) * (rng.random((64, 300)) < 0.1), rng.integers(0, 99, 300),
                        rng.integers(0, 99, (64, 6)), rng.integers(0, 99, 64), 256)
    back = pickle.loads(pickle.dumps(part))
    for name in ("intersection", "label_area", "unit_cat", "unit_area", "images"):
        assert np.array_equal(getattr(back, name), getattr(part, name))
    assert back.intersection.dtype == np.int64
    old = TallyPartial.__new__(TallyPartial)  # a partial checkpointed before packing: its plain state
    old.__setstate__(dict(vars(part)))
    assert np.array_equal(old.intersection, part.intersection)
    legacy = radix.RadixPartial.__new__(radix.RadixPartial)
    legacy.__setstate__({"hist": np.arange(6).reshape(2, 3), "count": 4})
    assert legacy.count == 4 and np.array_equal(legacy.hist, np.arange(6).reshape(2, 3))
