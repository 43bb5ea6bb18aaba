"""MSE range search on the format's real grid: on a histogram, and on weights directly.

The error of a range is the squared error of fake quantization with the qparams that
``lb.qparams_from_range`` gives for it, on the scheme's real grid (``fmt.round``: integers,
or the fp8/fp6/fp4 values), so an fp4 search sees fp4's uneven steps, not an int grid.

* ``mse_range_from_histogram``: ``sum_bins count * (center - Q(center))**2``, vectorized
  as a ``[candidates, bins]`` tensor. Symmetric: every bin edge ``t = k * w`` is a candidate
  (exhaustive). Asymmetric: a ``(lo, hi)`` grid of 24 x 24 pairs, zoomed in three times
  around the best pair (to well under one bin width).
* ``mse_search(w, scheme, grid=100)``: per channel / per group / per tensor qparams for a
  weight, straight on its values, vectorized over the blocks (one Python step per shrink
  factor, not per row).
"""

from __future__ import annotations

import torch

from ..formats import round_to_integer
from ..quant import QParams, Scheme, qparams_from_range
from ..quant.granularity import PerGroup, blocked_view

__all__ = ["fake_quant_grid", "mse_range_from_histogram", "mse_search"]

_CHUNK = 1 << 22  # elements per [candidates, bins] chunk


def fake_quant_grid(v: torch.Tensor, qp: QParams, scheme: Scheme) -> torch.Tensor:
    """Quantize-dequantize ``v`` with scales (and zero points) that broadcast against it.

    The same arithmetic as ``lb.fake_quantize`` for plain schemes (``v / scale`` rounded on
    the format's grid, or ``round(v / scale) + zp`` clamped, for asymmetric), without its
    block layout, so a ``[candidates, bins]`` tensor can be scored at once.
    """
    fmt = scheme.format
    s = qp.scale.to(v.dtype)
    y = v / s
    if qp.zero_point is None:
        return fmt.round(y.float(), scheme.rounding).to(v.dtype) * s
    z = qp.zero_point.to(v.dtype)
    r = (round_to_integer(y, scheme.rounding) + z).clamp(fmt.min, fmt.max)
    return (r - z) * s


def _errors(centers, counts, lo, hi, scheme) -> torch.Tensor:
    """Expected squared error of each candidate range ``(lo[k], hi[k])``."""
    out = []
    v = centers.float()  # float32, as lowbit quantizes
    step = max(1, _CHUNK // max(1, centers.numel()))
    for a in range(0, lo.numel(), step):
        qp = qparams_from_range(lo[a:a + step, None], hi[a:a + step, None], scheme)
        e = (fake_quant_grid(v, qp, scheme) - v).square_()
        out.append(e.matmul(counts.float()).double())
    return torch.cat(out)


def mse_range_from_histogram(centers: torch.Tensor, counts: torch.Tensor, scheme: Scheme,
                             width: float) -> tuple[float, float]:
    """The ``(lo, hi)`` of least expected squared error for ``scheme`` on a histogram.

    Args:
        centers, counts: bin centres (signed, float64) and their counts; empty bins may be
            left out.
        width: the bin width; candidates are its multiples up to the data's extent.
    Returns:
        ``(-t, t)`` for a symmetric scheme, else the best ``(lo, hi)`` (floats).
    """
    scheme = Scheme.parse(scheme)
    centers, counts = centers.double(), counts.double()
    top = float(centers.abs().max()) + width / 2
    if scheme.symmetric:
        t = torch.arange(1, round(top / width) + 1, dtype=torch.float64) * width
        err = _errors(centers, counts, -t, t, scheme)
        k = int(torch.argmin(err))
        return -float(t[k]), float(t[k])
    lo_end = min(0.0, float(centers.min()) - width / 2)
    hi_end = max(0.0, float(centers.max()) + width / 2)
    best_lo, best_hi = lo_end, hi_end
    span_lo, span_hi = -lo_end, hi_end  # search best +- span on each side
    for _ in range(4):
        g = 24
        ls = (best_lo + torch.linspace(-span_lo, span_lo, g, dtype=torch.float64)).clamp(lo_end, 0)
        hs = (best_hi + torch.linspace(-span_hi, span_hi, g, dtype=torch.float64)).clamp(0, hi_end)
        L, H = torch.meshgrid(ls.unique(), hs.unique(), indexing="ij")
        L, H = L.reshape(-1), H.reshape(-1)
        k = int(torch.argmin(_errors(centers, counts, L, H, scheme)))
        best_lo, best_hi = float(L[k]), float(H[k])
        span_lo, span_hi = 2 * span_lo / (g - 1), 2 * span_hi / (g - 1)
        if max(span_lo, span_hi) < width / 4:
            break
    return best_lo, best_hi


def _bcast(t: torch.Tensor) -> torch.Tensor:
    """[n0, n1, ...] -> [n0, 1, n1, 1, ...] to broadcast over ``blocked_view``."""
    return t.reshape([d for n in t.shape for d in (n, 1)])


def mse_search(w: torch.Tensor, scheme: Scheme | str, grid: int = 100) -> QParams:
    """QParams for ``w`` that minimize each block's squared quantization error.

    Each block (per tensor, channel, token or group, as ``scheme`` says) tries shrink factors
    ``a = 1, 1 - 1/grid, ..., 1/grid`` of its min-max range and keeps its best; blocks are
    scored together, one step per factor.

    * symmetric: ``amax * a``;
    * asymmetric: ``(lo * a, hi * a)`` first, then the low end alone ``(lo * a, hi*)``, then
      the high end alone ``(lo*, hi * a)``: a coordinate search over ``(lo, hi)`` pairs in
      ``3 * grid`` steps.

    Args:
        w: float tensor (a weight ``[N, K]``, any shape the scheme accepts).
        scheme: a plain scheme (fp32 scales), e.g. ``"int4:g128"`` or ``"int4:g128:asym"``;
            MX/NVFP4 scales are computed from the data and cannot be searched here.
        grid: number of shrink factors (``>= 1``; 1 is plain min-max).
    Returns:
        ``lb.QParams`` shaped like ``lb.choose_qparams(w, scheme)``, ready for
        ``lb.quantize(w, scheme, qp)``.

    >>> qp = mse_search(w, "int4:g128", grid=100)      # scale [N, K/128]
    """
    scheme = Scheme.parse(scheme)
    if scheme.is_block_scaled:
        raise ValueError(f"mse_search: {scheme} computes its block scales from the data; use "
                         "a plain scheme (e.g. int4:g32 or fp4_e2m1:g32)")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"mse_search: grid must be an integer >= 1; got {grid!r}")
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.numel() == 0:
        raise TypeError("mse_search: w must be a non-empty floating torch.Tensor")
    x = w.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"mse_search: w holds {int((~torch.isfinite(x)).sum())} NaN/Inf values")
    g = scheme.granularity
    if scheme.pad and isinstance(g, PerGroup) and x.dim() and x.shape[-1] % g.size:
        x = torch.nn.functional.pad(x, (0, g.padded_last(x.shape[-1]) - x.shape[-1]))
    block = g.block_shape(tuple(x.shape))
    xb = blocked_view(x, block)
    dims = tuple(range(1, xb.dim(), 2))
    lo0, hi0 = xb.amin(dims), xb.amax(dims)
    if scheme.symmetric:
        amax = torch.maximum(-lo0, hi0)
        lo0, hi0 = -amax, amax
    factors = [1.0 - k / grid for k in range(grid)]

    def err(lo, hi):
        qp = qparams_from_range(lo, hi, scheme)
        bq = QParams(_bcast(qp.scale), None if qp.zero_point is None else _bcast(qp.zero_point))
        return ((xb - fake_quant_grid(xb, bq, scheme)) ** 2).sum(dims)

    best_err = err(lo0, hi0)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for which in ("both",) if scheme.symmetric else ("both", "lo", "hi"):
        base_lo, base_hi = best_lo.clone(), best_hi.clone()
        for a in factors[1:]:
            lo = base_lo * a if which in ("both", "lo") else base_lo
            hi = base_hi * a if which in ("both", "hi") else base_hi
            e = err(lo, hi)
            better = e < best_err
            best_err = torch.where(better, e, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
    return qparams_from_range(best_lo, best_hi, scheme)
