"""Histogram observers: ``Histogram(method="entropy" | "mse" | "percentile")`` and
``Percentile(q)``.

The histogram is kept as two halves over ``|x|``, one for ``x >= 0`` and one for ``x < 0``,
with bins ``[j*w, (j+1)*w)`` (per channel: one width per channel). Their sum is the
histogram of ``|x|`` over ``[0, max|x|]`` that TensorRT/ModelOpt's entropy calibration
reads; side by side they are the signed histogram that the percentile and MSE searches
read. The first batch sets ``w = max|x| / bins`` (a channel of zeros keeps ``w = 0``, which
just says that every value seen is 0, until a non-zero batch sets it).

Growth: when a later batch exceeds the covered range, bins of the same width are added
(ModelOpt's rule), so counts are never moved. If a channel would need more than
``16 * bins`` bins, its bins are merged in pairs (width doubled, counts summed: nothing is
lost) until it fits. With the largest value in the first batch, streaming gives exactly the
one-batch histogram; otherwise thresholds agree within one bin width.
"""

from __future__ import annotations

import math

import torch

from ..quant import Scheme
from .entropy import entropy_threshold
from .mse import mse_range_from_histogram
from .observer import Observer

__all__ = ["Histogram", "Percentile"]

METHODS = ("entropy", "mse", "percentile")
GROWTH_LIMIT = 16  # at most GROWTH_LIMIT * bins bins per side before merging pairs


class Histogram(Observer):
    """Histogram of everything seen; its range comes from an entropy, MSE or percentile search.

    Args:
        bins: bins over ``[0, max|x|]`` set by the first batch (2048, TensorRT's number).
        method: ``"entropy"`` (KL divergence, TensorRT/ModelOpt), ``"mse"`` (least expected
            squared error on the scheme's real grid) or ``"percentile"``.
        scheme: the scheme ``range()`` searches for (``qparams(scheme)`` searches for the
            scheme it is given): entropy and MSE depend on the format's grid.
        q: the percentile, in percent (``method="percentile"`` only).
        axis: ``None`` per tensor, or the channel axis (one histogram per channel).

    ``range()`` returns ``(lo, hi)``:

    * entropy: ``t`` = the KL threshold on ``|x|``; ``(max(-t, min), min(t, max))``, where
      ``min``/``max`` are the data's extremes widened to hold 0.
    * mse: symmetric schemes ``(-t, t)`` clipped like entropy; asymmetric ``(lo, hi)``.
    * percentile: ``range()`` gives the two-sided quantiles ``(q_(100-q), q_q)`` of x;
      ``qparams`` of a symmetric scheme uses the ``q``-th percentile of ``|x|`` instead.

    >>> obs = Histogram(method="entropy")
    >>> for batch in batches: obs.update(batch)
    >>> lo, hi = obs.range(); qp = obs.qparams("int8")
    """

    def __init__(self, bins: int = 2048, method: str = "entropy",
                 scheme: Scheme | str = "int8", q: float = 99.99, axis: int | None = None):
        super().__init__(axis)
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2; got {bins!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if not 0.0 < q <= 100.0:
            raise ValueError(f"q is a percentile in (0, 100]; got {q!r}")
        self.bins, self.method, self.q = bins, method, float(q)
        self.scheme = Scheme.parse(scheme)
        self.width: torch.Tensor | None = None  # [C] float64 bin width per channel
        self.pos: torch.Tensor | None = None  # [C, n] counts of x >= 0 by |x| bin
        self.neg: torch.Tensor | None = None  # [C, n] counts of x < 0 by |x| bin
        self.nbins: torch.Tensor | None = None  # [C] bins in use per channel
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    # -- collecting -----------------------------------------------------------------------

    def _observe(self, x2d, lo, hi):
        amax = torch.maximum(-lo, hi).double()
        C = x2d.shape[0]
        if self.count == 0:
            self.width = amax / self.bins
            self.pos = torch.zeros(C, self.bins, dtype=torch.float64)
            self.neg = torch.zeros_like(self.pos)
            self.nbins = torch.full((C,), self.bins)
            self.lo, self.hi = lo.double(), hi.double()
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo.double()), torch.maximum(self.hi, hi.double())
            fresh = (self.width == 0) & (amax > 0)  # only zeros so far: all in bin 0
            self.width = torch.where(fresh, amax / self.bins, self.width)
            self._grow(amax)
        # one bincount for all channels: bin k of row c spans [(k - n) w, (k - n + 1) w)
        n = self.pos.shape[1]
        w = torch.where(self.width > 0, self.width, 1.0).float()[:, None]
        y = x2d / w
        k = y.add_(n).clamp_(0, 2 * n - 0.5).long()  # >= 0, so truncation is floor
        if C > 1:
            k += torch.arange(C)[:, None] * (2 * n)
        h = torch.bincount(k.reshape(-1), minlength=C * 2 * n).reshape(C, 2 * n).double()
        neg, pos = h[:, :n].flip(1), h[:, n:]
        if C > 1:  # a value a rounding step past a channel's last bin belongs to that bin
            for half in (neg, pos):
                beyond = torch.arange(n)[None, :] >= self.nbins[:, None]
                extra = (half * beyond).sum(1, keepdim=True)
                half.masked_fill_(beyond, 0).scatter_add_(1, self.nbins[:, None] - 1, extra)
        self.neg += neg
        self.pos += pos

    def _grow(self, amax: torch.Tensor) -> None:
        w = self.width
        covered = self.nbins * w
        need = torch.where((amax > covered) & (w > 0), torch.ceil(amax / w.clamp(min=1e-300)),
                           self.nbins.double()).long()
        limit = GROWTH_LIMIT * self.bins
        for c in torch.nonzero(need > limit)[:, 0].tolist():
            f = 2 ** math.ceil(math.log2(int(need[c]) / limit))
            for half in (self.pos, self.neg):
                row = half[c]
                row = torch.nn.functional.pad(row, (0, -row.numel() % f)).reshape(-1, f).sum(1)
                half[c] = torch.nn.functional.pad(row, (0, half.shape[1] - row.numel()))
            w[c] *= f
            need[c] = max(math.ceil(float(amax[c] / w[c])), -(-int(self.nbins[c]) // f))
        self.nbins = torch.maximum(need, torch.full_like(need, self.bins))
        n = int(self.nbins.max())
        if n > self.pos.shape[1]:
            pad = n - self.pos.shape[1]
            self.pos = torch.nn.functional.pad(self.pos, (0, pad))
            self.neg = torch.nn.functional.pad(self.neg, (0, pad))

    # -- views ----------------------------------------------------------------------------

    def bin_width(self) -> torch.Tensor:
        """``[C]`` bin width per channel (float64)."""
        self._check_seen()
        return self.width.clone()

    def abs_histogram(self) -> list[torch.Tensor]:
        """Per channel, the histogram of ``|x|``: bins ``[j*w, (j+1)*w)`` for j < nbins."""
        self._check_seen()
        return [(self.pos[c] + self.neg[c])[: int(self.nbins[c])] for c in range(len(self.width))]

    def signed_histogram(self, c: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(centers, counts)`` of channel ``c``, ascending, empty bins left out."""
        self._check_seen()
        n, w = int(self.nbins[c]), float(self.width[c])
        mid = (torch.arange(n, dtype=torch.float64) + 0.5) * w
        centers = torch.cat([-mid.flip(0), mid])
        counts = torch.cat([self.neg[c, :n].flip(0), self.pos[c, :n]])
        keep = counts > 0
        if w == 0.0:
            return torch.zeros(1, dtype=torch.float64), counts.sum().reshape(1)
        return centers[keep], counts[keep]

    # -- searches -------------------------------------------------------------------------

    def _range(self, scheme):
        method = self.method
        if method == "percentile":
            if scheme is None or not scheme.symmetric:
                return self._signed_percentile(100.0 - self.q), self._signed_percentile(self.q)
            return self._clip(self._abs_percentile(self.q))
        scheme = self.scheme if scheme is None else scheme
        lo, hi = [], []  # thresholds below and above 0, as positive numbers
        hists = self.abs_histogram() if method == "entropy" else None
        for c in range(len(self.width)):
            if float(self.width[c]) == 0.0:
                lo.append(0.0), hi.append(0.0)
                continue
            if method == "entropy":
                i = entropy_threshold(hists[c], scheme.format)
                t = i * float(self.width[c])
                lo.append(t), hi.append(t)
            else:
                a, b = mse_range_from_histogram(*self.signed_histogram(c), scheme,
                                                float(self.width[c]))
                lo.append(-a), hi.append(b)
        return self._clip(torch.tensor(hi, dtype=torch.float64),
                          torch.tensor(lo, dtype=torch.float64))

    def _clip(self, t_hi, t_lo=None):
        """``(max(-t_lo, min(lo, 0)), min(t_hi, max(hi, 0)))``: a threshold never reaches
        past the data, and the range always holds 0 (as ``qparams_from_range`` makes it)."""
        t_lo = t_hi if t_lo is None else t_lo
        return (torch.maximum(-t_lo, self.lo.clamp(max=0)),
                torch.minimum(t_hi, self.hi.clamp(min=0)))

    def _abs_percentile(self, q: float) -> torch.Tensor:
        counts = torch.nn.functional.pad(self.pos + self.neg, (1, 0))  # a leading empty bin
        return _interpolate(counts, q, self.width, 0.0)

    def _signed_percentile(self, q: float) -> torch.Tensor:
        n = self.pos.shape[1]
        counts = torch.cat([torch.zeros_like(self.pos[:, :1]), self.neg.flip(1), self.pos], 1)
        v = _interpolate(counts, q, self.width, -n * self.width)
        return v.clamp(self.lo, self.hi)


def _interpolate(counts: torch.Tensor, q: float, width, start) -> torch.Tensor:
    """The q-th percentile per row of ``counts`` (bin k+1 spans ``start + [k, k+1) * w``;
    column 0 is an empty guard bin), linear inside the bin where the cumulative count
    reaches ``q`` percent of the total."""
    cdf = counts.cumsum(1)
    total = cdf[:, -1:]
    target = total * (q / 100.0)
    k = torch.searchsorted(cdf, target).clamp(1, counts.shape[1] - 1)  # first cdf >= target
    before = cdf.gather(1, k - 1)
    inside = counts.gather(1, k).clamp(min=1e-300)
    frac = ((target - before) / inside).clamp(0, 1)[:, 0]
    return start + (k[:, 0] - 1 + frac) * width


class Percentile(Histogram):
    """The ``q``-th percentile of what was seen, read from a histogram (within one bin).

    ``range()`` is ``(percentile(x, 100 - q), percentile(x, q))``; ``qparams`` of a symmetric
    scheme uses ``percentile(|x|, q)`` (ModelOpt's and ORT's symmetric rule).

    >>> Percentile(q=99.99).update(torch.randn(10**6)).range()  # about (-3.72, 3.72)
    """

    def __init__(self, q: float = 99.99, bins: int = 2048, axis: int | None = None):
        super().__init__(bins=bins, method="percentile", q=q, axis=axis)
