"""Bilinear sampling of feature maps at the concept-mask size: the `resize = "bilinear"` option.

It equals NetDissect-Lite's imresize (mode 'F', `pil_resize.py`) up to an ulp when a map is smaller
than its mask; when larger, Pillow antialiases (averages every map pixel a mask pixel covers) and
this reads only the nearest four.

`upsample` is F.interpolate (align_corners=False); `Bilinear` evaluates the same sample positions and
weights with a fixed order of float32 operations, so a pixel's value is the same whether the whole
map is resized or only the cells that may exceed a threshold: the tally evaluates only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate` (bilinear, align_corners=False) of maps [M, h, w], each as its own [1, 1, h, w]
    image, so batched and one-at-a-time results are identical. The tally's `resize="torch"` reference."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class _Axis:
    """One axis of a bilinear resize: per output index its two sources i0, i1 and the weight w of
    i1 (w[n_out] = NaN: padding); outputs in groups [G, R] (padded with n_out) of consecutive
    indices sharing their sources g0[G], g1[G]."""

    i0: torch.Tensor
    i1: torch.Tensor
    w: torch.Tensor
    groups: torch.Tensor
    g0: torch.Tensor
    g1: torch.Tensor
    last: torch.Tensor  # [G]: the last output index of each group
    wg: torch.Tensor  # [G, R]: w of each group's outputs (NaN in padding)

    @classmethod
    def build(cls, n_in: int, n_out: int, device: torch.device | str = "cpu") -> _Axis:
        scale = np.float32(n_in) / np.float32(n_out)  # as F.interpolate computes sample positions
        c = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
        i0 = np.minimum(np.floor(c).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = np.where(i1 > i0, np.clip(c - i0.astype(np.float32), 0, 1), 0).astype(np.float32)  # at an edge: exactly x
        starts = [i for i in range(n_out) if i == 0 or i0[i] != i0[i - 1]]
        size = -(-n_out // n_in)
        runs = [list(range(a, b))[k:k + size] for a, b in zip(starts, [*starts[1:], n_out]) for k in range(0, b - a, size)]
        groups = np.array([r + [n_out] * (size - len(r)) for r in runs], dtype=np.int64)
        t = lambda v: torch.as_tensor(v, device=device)  # noqa: E731
        last = np.where(groups < n_out, groups, -1).max(axis=1)
        w = np.append(w, np.float32(np.nan))
        return cls(t(i0), t(i1), t(w), t(groups), t(i0[groups[:, 0]]), t(i1[groups[:, 0]]), t(last), t(w[groups]))


@dataclass(frozen=True)
class Bilinear:
    """The `resize="bilinear"` sampling: F.interpolate's sample positions and weights (bilinear,
    align_corners=False), evaluated in float32 as
    t_y = x[y, x0] + b * (x[y, x1] - x[y, x0]), out = t_y0 + a * (t_y1 - t_y0), each operation
    rounded once: a pixel's value is the same whether the whole map is resized (`resize`) or only
    the cells that may exceed a threshold (`on_pixels`). It differs from F.interpolate by a few
    ulps, and is exact where a map is constant (F.interpolate can overshoot by an ulp there)."""

    rows: _Axis
    cols: _Axis
    size: tuple[int, int]

    @classmethod
    def build(cls, source: tuple[int, int], size: tuple[int, int], device: torch.device | str = "cpu") -> Bilinear:
        return cls(_Axis.build(source[0], size[0], device), _Axis.build(source[1], size[1], device), tuple(size))

    def resize(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps [M, h, w] -> [M, sh, sw]."""
        if tuple(maps.shape[-2:]) == self.size:
            return maps
        r, c, (sh, sw) = self.rows, self.cols, self.size
        xa, xb = maps.index_select(2, c.i0), maps.index_select(2, c.i1)
        t = xa + c.w[:sw] * (xb - xa)  # [M, h, sw]
        ta, tb = t.index_select(1, r.i0), t.index_select(1, r.i1)
        return ta + r.w[:sh, None] * (tb - ta)

    def on_pixels(self, maps: torch.Tensor, thr: torch.Tensor, near: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(map index, flat pixel index) of every resized value `> thr` [M]; only cells with a
        corner above `near` (a little below thr: rounding) are evaluated."""
        r, c, sw = self.rows, self.cols, self.size[1]
        if tuple(maps.shape[-2:]) == self.size:
            return torch.nonzero(maps.reshape(len(maps), -1) > thr[:, None], as_tuple=True)
        # the largest of each group cell's four sources (g0, g1) x (g0, g1)
        pair = torch.maximum(maps.index_select(1, r.g0), maps.index_select(1, r.g1))
        corner = torch.maximum(pair.index_select(2, c.g0), pair.index_select(2, c.g1))
        m, gy, gx = torch.nonzero(corner > near[:, None, None], as_tuple=True)
        h, w = maps.shape[1:]
        flat, base = maps.reshape(-1), m * (h * w)
        y0, y1 = base + r.g0.index_select(0, gy) * w, base + r.g1.index_select(0, gy) * w
        x0, x1 = c.g0.index_select(0, gx), c.g1.index_select(0, gx)
        x00, x01, x10, x11 = (flat.index_select(0, y + x)[:, None] for y, x in ((y0, x0), (y0, x1), (y1, x0), (y1, x1)))
        b = c.wg.index_select(0, gx)  # [cells, C]; NaN in padding
        t0, t1 = x00 + b * (x01 - x00), x10 + b * (x11 - x10)  # the cell's first and last source rows, resized
        d = t1 - t0
        # down a column a value is t0 + a * d with a rising weight a, and float rounding keeps that
        # monotone: the column's largest value is at its first or last row
        a = r.wg.index_select(0, gy)  # [cells, R]
        top = torch.maximum(t0 + a[:, :1] * d, t0 + r.w.index_select(0, r.last.index_select(0, gy))[:, None] * d)
        kc, jc = torch.nonzero(top > near.index_select(0, m)[:, None], as_tuple=True)
        flat_col = kc * d.shape[1] + jc
        values = (t0.reshape(-1).index_select(0, flat_col)[:, None]
                  + a.index_select(0, kc) * d.reshape(-1).index_select(0, flat_col)[:, None])  # NaN in padding
        q, i = torch.nonzero(values > thr.index_select(0, m.index_select(0, kc))[:, None], as_tuple=True)
        cell, j = kc.index_select(0, q), jc.index_select(0, q)
        corner = r.groups[:, 0].index_select(0, gy) * sw + c.groups[:, 0].index_select(0, gx)  # runs of consecutive indices
        return m.index_select(0, cell), corner.index_select(0, cell) + i * sw + j
