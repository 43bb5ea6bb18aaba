"""KL-divergence (entropy) calibration: TensorRT's algorithm, vectorized over candidates.

The algorithm (Migacz, "8-bit Inference with TensorRT", GTC 2017), with NVIDIA ModelOpt's
conventions (``_compute_amax_entropy``), on a histogram ``h`` of ``|x|`` with bins of width
``w`` starting at 0:

1. ``h[0] = h[1]`` (bin 0 holds the zeros of ReLUs and padding; it would dominate).
2. For every candidate ``i`` from bin ``start_bin = 128`` to ``len(h)`` (inclusive):
   P = ``h[:i]`` with the tail ``sum(h[i:])`` added to its last bin;
   Q = ``h[:i]`` merged into ``L`` levels (bin ``j`` goes to level ``floor(j * L / i)``),
   each level's sum shared equally among its non-empty bins (empty bins stay 0).
   ``L = 2**(bits-1)`` for a signed int format (128 for int8), ``2**bits`` unsigned.
3. KL(P || Q) of the normalized P and Q (``inf`` where P > 0 and Q == 0).
4. The last ``i`` of least KL wins; the threshold is that bin's upper edge, ``i * w``.

Vectorized: the KL of one candidate needs only per-level sums, so with prefix sums of
``h``, of ``h > 0`` and of ``h log h``, every candidate costs O(L), not O(i)::

    sum_j P log P = H[i-1] + (h[i-1] + tail) log(h[i-1] + tail)
    sum_j P log Q = sum_levels S log(S / n)  +  tail * log(S_last / n_last)
    KL = (sum P log P - sum P log Q) / T - log T + log(sum h[:i])

(``S``, ``n``: a level's count and number of non-empty bins; ``T``: the total count).

Float formats (fp8, fp6, fp4) have no uniform levels: their levels are the format's own
non-negative grid values scaled so that ``max`` sits at the candidate threshold, and bin
``j`` joins the grid value its centre rounds to (so fp8_e4m3fn has 127 levels: 0 and 126 positive values).

onnxruntime's ``EntropyCalibrater`` (1.32, ``HistogramCollector.get_entropy_threshold``)
follows MXNet's variant, not this one; on the same data the two differ because ORT:

* histograms the signed values over ``[-max|x|, max|x|]`` (2048 bins: 1024 per sign) and
  grows by whole bins on both sides, where this is 2048 bins of ``|x|`` over ``[0, max|x|]``;
* takes ``num_quantized_bins = 128`` across *both* signs (64 levels per sign for int8),
  slices a window of ``2*i + 1`` bins around the zero bin, folds both tails in;
* merges bins into levels by integer division (the remainder joins the last level);
* smooths P and Q (``eps = 1e-4``) instead of giving ``inf`` where Q is 0;
* keeps bin 0 as it is (no ``h[0] = h[1]``), takes the *first* argmin, and clips the
  threshold to the data's ``[min, max]`` (as ``Histogram`` does too).

``benchmarks/calibration.py`` prints both thresholds side by side.
"""

from __future__ import annotations

import functools

import torch

from ..formats import FloatFormat, Format, IntFormat

__all__ = ["entropy_threshold", "kl_divergences"]

START_BIN = 128


@functools.cache
def _float_midpoints(fmt: FloatFormat) -> torch.Tensor:
    """Midpoints between consecutive non-negative grid values, as fractions of max."""
    v = fmt.values().double()
    v = v[v >= 0]
    return ((v[1:] + v[:-1]) / 2 / fmt.max)


def num_levels(fmt: Format) -> int:
    """Quantization levels of one sign: 128 for int8, 256 for uint8, 8 for int4."""
    if isinstance(fmt, IntFormat) or not fmt.is_float:
        return int(fmt.max) + 1
    return int(_float_midpoints(fmt).numel()) + 1


@functools.lru_cache(maxsize=16)
def _levels(fmt: Format, n: int, start_bin: int):
    """For candidates ``i = start..n``: ``[K, L+1]`` first bin of each level (``i`` last)
    and ``[K]`` the level that holds bin ``i - 1``. Depends on the sizes only: cached."""
    i = torch.arange(min(start_bin, n), n + 1)
    col = i[:, None]
    if isinstance(fmt, FloatFormat):
        mid = _float_midpoints(fmt)[None, :]
        inner = torch.minimum(torch.ceil(mid * col.double() - 0.5).long().clamp(0, None), col)
        b = torch.cat([torch.zeros_like(col), inner, col], 1)
    else:
        L = num_levels(fmt)
        b = (torch.arange(L + 1)[None, :] * col + L - 1) // L  # ceil(l * i / L)
    last = (b[:, 1:-1] <= col - 1).sum(1)
    return i, b, last


def kl_divergences(hist: torch.Tensor, fmt: Format, start_bin: int = START_BIN):
    """KL(P || Q) of every candidate; returns ``(candidates i, kl)`` (float64, ``inf`` where
    undefined). ``hist`` is the ``|x|`` histogram *before* the ``h[0] = h[1]`` step."""
    h = hist.double().clone()
    n = h.numel()
    if n < 2:
        raise ValueError(f"entropy calibration needs at least 2 bins; got {n}")
    h[0] = h[1]
    T = h.sum()
    zero = torch.zeros(1, dtype=torch.float64)
    H = torch.cat([zero, h.cumsum(0)])  # H[k] = sum h[:k]
    N = torch.cat([zero, (h > 0).double().cumsum(0)])
    E = torch.cat([zero, torch.xlogy(h, h).cumsum(0)])
    i, b, last = _levels(fmt, n, start_bin)
    Hb = H[b]
    S = Hb[:, 1:] - Hb[:, :-1]  # [K, L] count of each level
    Nb = N[b]
    q = S / (Nb[:, 1:] - Nb[:, :-1]).clamp_(min=1)  # Q of each non-empty bin of the level
    plogq = torch.xlogy(S, q).sum(1)
    tail = T - H[i]  # folded into bin i - 1, which sits in level ``last``
    plogq += torch.xlogy(tail, q.gather(1, last[:, None])[:, 0])
    plogp = E[i - 1] + torch.xlogy(h[i - 1] + tail, h[i - 1] + tail)
    C = H[i]
    kl = (plogp - plogq) / T - torch.log(T) + torch.log(C)
    undefined = ((h[i - 1] == 0) & (tail > 0)) | (C <= 0)
    return i, kl.masked_fill_(undefined, torch.inf)


def entropy_threshold(hist: torch.Tensor, fmt: Format, start_bin: int = START_BIN,
                      rtol: float = 1e-12) -> int:
    """The winning candidate ``i`` (a bin count): the threshold is ``i * bin_width``.

    Ties (KL within ``rtol`` of the least, to absorb rounding) go to the last candidate.

    >>> torch.manual_seed(0); h = torch.histc(torch.randn(10**6).abs(), 2048, 0, 5.0)
    >>> entropy_threshold(h, lb.formats.get("int8"))  # bin width 5/2048: threshold 4.90
    2008
    """
    i, kl = kl_divergences(hist, fmt, start_bin)
    finite = torch.isfinite(kl)
    if not bool(finite.any()):
        return int(i[-1])
    best = kl[finite].min()
    tol = rtol * max(1.0, abs(float(best)))
    winners = torch.nonzero(finite & (kl <= best + tol))[:, 0]
    return int(i[winners[-1]])
