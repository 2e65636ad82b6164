"""PIL's bilinear resize of float maps, as NetDissect-Lite's `imresize(map, mask_size, mode='F')`, in torch.

scipy's imresize (mode 'F') is Pillow's `Image.resize(size, BILINEAR)` on a float32 image. Pillow
resamples each axis with a triangle filter whose support grows with the reduction factor: when a
map is larger than its mask, every mask pixel averages all the map pixels it covers (antialiasing),
where plain bilinear sampling (`bilinear.py`, F.interpolate) reads only the nearest four. When the
map is smaller, both are the same bilinear interpolation.

`PilResize` applies Pillow's normalized filter coefficients (float64, computed as its
`precompute_coeffs` does) one axis at a time, in Pillow 13's order, adding the taps in order in
float64 and rounding to float32 after each pass (Pillow keeps the first pass in a float32 image).
Bit for bit equal to Pillow 13 (tests/test_netdissect_rules.py). Batched, on the maps' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.stages.dissection.bilinear import Bilinear


def pil_weights(n_in: int, n_out: int) -> np.ndarray:
    """float64 [n_out, n_in]: Pillow's bilinear coefficients (`precompute_coeffs`) of one axis."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's support, 1, widened when shrinking
    inverse = 1.0 / filterscale  # Pillow multiplies by it (not the same rounding as dividing)
    weights = np.zeros((n_out, n_in))
    for out in range(n_out):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int(): truncation toward zero, as C's cast
        hi = min(int(center + support + 0.5), n_in)
        k = [max(0.0, 1.0 - abs((x - center + 0.5) * inverse)) for x in range(lo, hi)]
        total = 0.0
        for value in k:  # summed in order, as Pillow (np.sum adds pairwise)
            total += value
        weights[out, lo:hi] = [value / total for value in k] if total != 0.0 else k
    return weights


@dataclass(frozen=True)
class _Taps:
    """One axis as Pillow evaluates it: output j = sum over t of x[index[t, j]] * weight[t, j], added in
    tap order (ascending source) in float64. Short windows are padded with index n_in, a zero appended
    to the axis, so padding adds an exact 0 whatever the map holds."""

    index: torch.Tensor  # int64 [T, n_out]
    weight: torch.Tensor  # float64 [T, n_out]

    @classmethod
    def build(cls, n_in: int, n_out: int, device: torch.device | str) -> _Taps:
        weights = pil_weights(n_in, n_out)
        taps = int((weights != 0).sum(axis=1).max()) if n_out else 0
        index = np.full((taps, n_out), n_in, np.int64)
        weight = np.zeros((taps, n_out))
        for j, row in enumerate(weights):
            lo = int(np.flatnonzero(row)[0])
            hi = int(np.flatnonzero(row)[-1]) + 1
            index[:hi - lo, j] = np.arange(lo, hi)
            weight[:hi - lo, j] = row[lo:hi]
        t = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return cls(t(index, torch.int64), t(weight, torch.float64))

    def apply(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """float32 maps -> float32, resampled along `dim` (-1 or -2)."""
        pad = (0, 1) if dim == -1 else (0, 0, 0, 1)
        x = torch.nn.functional.pad(x, pad).double()
        shape = (1,) * (x.dim() + dim) + (-1,) + (1,) * (-dim - 1)
        out = None
        for index, weight in zip(self.index, self.weight):
            term = x.index_select(x.dim() + dim, index) * weight.view(shape)
            out = term if out is None else out.add_(term)
        return out.float()


@dataclass(frozen=True)
class PilResize:
    """Maps [M, h, w] -> float32 [M, sh, sw], as Pillow's BILINEAR resize of each map."""

    rows: _Taps
    cols: _Taps
    size: tuple[int, int]
    dense_rows: torch.Tensor  # float32 [sh, h]: the same coefficients, for the fast float32 pass
    dense_cols: torch.Tensor  # float32 [w, sw]
    error: float  # a bound on |float32 products - Pillow's values|, relative to a map's largest |value|
    bilinear: Bilinear  # when no axis shrinks: Pillow's weights, in float32, evaluated near the threshold only

    @classmethod
    def build(cls, source: tuple[int, int], size: tuple[int, int], device: torch.device | str = "cpu") -> PilResize:
        (h, w), (sh, sw) = source, size
        dense = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        # float32 dot products of length n with weights summing to 1 err by at most n * 2^-24 * max|x| each
        # (any order, FMA or not); Pillow's two float32 roundings add 2^-24 * max|x| each; doubled for margin
        error = 2.0 * (w + h + 4) * 2.0 ** -24
        return cls(_Taps.build(h, sh, device), _Taps.build(w, sw, device), tuple(size),
                   dense(pil_weights(h, sh)), dense(pil_weights(w, sw).T), error, Bilinear.build(source, size, device))

    def resize(self, maps: torch.Tensor) -> torch.Tensor:
        """Every pixel, exactly as Pillow."""
        x = maps.float()
        (h, w), (sh, sw) = x.shape[-2:], self.size
        for axis in ("rows", "cols") if _rows_first(h, w, sh, sw) else ("cols", "rows"):  # an axis whose size stays is skipped
            if axis == "cols" and w != sw:
                x = self.cols.apply(x, -1)
            elif axis == "rows" and h != sh:
                x = self.rows.apply(x, -2)
        return x

    def on_pixels(self, maps: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(map index, flat pixel index) of every pixel of `resize(maps)` that is `> thr` [M], each once
        (in no fixed order: the tally only counts them).

        Decided from a float32 resize (two matrix products) wherever it lies farther from the threshold
        than its error bound; the few pixels within it are evaluated exactly as Pillow does (`_exact_at`).
        Upsampled maps with few values above the threshold take the cheaper route of `_on_pixels_upsampled`.
        """
        x = maps.float()
        if tuple(x.shape[-2:]) == self.size:  # Pillow copies a map of the mask's size
            return torch.nonzero(x.reshape(len(x), -1) > thr[:, None], as_tuple=True)
        scale = x.abs().amax(dim=(1, 2))
        upsampled = x.shape[-2] <= self.size[0] and x.shape[-1] <= self.size[1]
        if upsampled and bool(torch.isfinite(scale).all()) and _share_above(x, thr) < DENSE_ABOVE:
            return self._on_pixels_upsampled(x, thr, scale)
        fast = x
        if x.shape[-1] != self.size[1]:
            fast = fast @ self.dense_cols
        if x.shape[-2] != self.size[0]:
            fast = self.dense_rows @ fast
        bound = torch.where(torch.isfinite(scale), scale * self.error, torch.inf)[:, None, None]
        d = fast - thr[:, None, None]
        on = d > bound
        unsure = ~(on | (d < -bound))  # NaN included
        m, i, j = torch.nonzero(unsure, as_tuple=True)
        if len(m):
            on[m, i, j] = self._exact_at(x, m, i, j) > thr.index_select(0, m)
        return torch.nonzero(on.reshape(len(x), -1), as_tuple=True)

    def _on_pixels_upsampled(self, x: torch.Tensor, thr: torch.Tensor, scale: torch.Tensor):
        """Upsampling is bilinear interpolation, Pillow's and `Bilinear`'s alike, with weights that differ in
        rounding only (far below 2^-10 of a map's largest |value|): the pixels `Bilinear` finds above the
        threshold less that margin are the candidates, each then evaluated exactly as Pillow."""
        low = thr - scale * 2.0 ** -10
        m, pos = self.bilinear.on_pixels(x, low, low - low.abs() * 1e-5)
        i, j = pos // self.size[1], pos % self.size[1]
        keep = self._exact_at(x, m, i, j) > thr.index_select(0, m)
        return m[keep], pos[keep]

    def _exact_at(self, x: torch.Tensor, m: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """float32 [P]: Pillow's value at pixels (m, i, j): its first pass at each source line the second
        pass reads, rounded to float32, then the second pass, each summed tap by tap in float64."""
        xp = torch.nn.functional.pad(x, (0, 1, 0, 1))  # index n_in: an exact zero for padded taps
        (h, w), (sh, sw) = x.shape[-2:], self.size
        if _rows_first(h, w, sh, sw):
            lines = self.cols.index.index_select(1, j) if w != sw else j[None]
            firsts = [_taps_at(self.rows, i, lambda r, c=c: xp[m, r, c]) if h != sh else xp[m, i, c] for c in lines]
            return _combine(firsts, self.cols, j) if w != sw else firsts[0]
        lines = self.rows.index.index_select(1, i) if h != sh else i[None]
        firsts = [_taps_at(self.cols, j, lambda c, r=r: xp[m, r, c]) if w != sw else xp[m, r, j] for r in lines]
        return _combine(firsts, self.rows, i) if h != sh else firsts[0]


# Upsampled maps with more than this share of their values above the threshold are resized whole, as
# shrunk ones are: the candidates' exact evaluation then costs more than two matrix products (measured
# from 8->32 to 7->112 pixels; the two break even at 3-10%).
DENSE_ABOVE = 0.06


def _share_above(x: torch.Tensor, thr: torch.Tensor) -> float:
    return int(torch.count_nonzero(x > thr[:, None, None])) / max(1, x.numel())


def _rows_first(h: int, w: int, sh: int, sw: int) -> bool:
    """Pillow 13's pass order (ImagingResampleInner): rows first when they shrink by more than twice
    as many pixels as the columns do."""
    return h - sh > 0 and h - sh > (w - sw) * 2


def _taps_at(taps: _Taps, at: torch.Tensor, source) -> torch.Tensor:
    """float32: the pass `taps` at output positions `at`, source(index) giving the input at each tap."""
    total = torch.zeros(len(at), dtype=torch.float64, device=at.device)
    for index, weight in zip(taps.index, taps.weight):
        total = total + source(index.index_select(0, at)).double() * weight.index_select(0, at)
    return total.float()


def _combine(values: list[torch.Tensor], taps: _Taps, at: torch.Tensor) -> torch.Tensor:
    """float32: the second pass over the first pass's values at each of its taps."""
    total = torch.zeros(len(at), dtype=torch.float64, device=at.device)
    for value, weight in zip(values, taps.weight):
        total = total + value.double() * weight.index_select(0, at)
    return total.float()
