"""Streaming statistics for the debug report: bounded memory, whatever the amount of data.

* ``ErrorStats`` accumulates how far an approximation ``y`` is from a reference ``x``:
  four running sums (``sum x^2``, ``sum (x-y)^2``, ``sum x*y``, ``sum y^2``, in float64) give
  MSE, SQNR and cosine similarity of everything seen, as if all batches were one tensor.
* ``RunningStats`` accumulates one tensor stream (e.g. a layer's input activations):
  count, sum, sum of squares, min/max, per-channel min/max and clipped counts (channel =
  last axis), and a signed histogram whose range doubles when a value falls outside it.

Memory: a few scalars, ``3 * channels`` floats and ``bins`` counts per stream; no
activation is ever stored.

>>> e = ErrorStats(); e.update(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]))
>>> e.sqnr_db     # 10*log10(25 / 1) = 13.98 dB
"""

from __future__ import annotations

import math

import torch

__all__ = ["ErrorStats", "RunningStats", "outlier_stats"]


class ErrorStats:
    """Error of ``y`` against the reference ``x``, accumulated over batches."""

    def __init__(self):
        self.n = 0
        self.signal = 0.0   # sum x^2
        self.noise = 0.0    # sum (x - y)^2
        self.dot = 0.0      # sum x * y
        self.power = 0.0    # sum y^2

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.detach().double().flatten(), y.detach().double().flatten()
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same number of elements; got {x.numel()} "
                             f"and {y.numel()}")
        self.n += x.numel()
        self.signal += float(x.dot(x))
        self.noise += float((x - y).pow(2).sum())
        self.dot += float(x.dot(y))
        self.power += float(y.dot(y))

    @property
    def mse(self) -> float:
        return self.noise / self.n if self.n else float("nan")

    @property
    def sqnr_db(self) -> float:
        """10 log10(sum x^2 / sum (x - y)^2); inf when y == x exactly."""
        if not self.n:
            return float("nan")
        if self.noise == 0:
            return float("inf")
        return 10 * math.log10(max(self.signal, 1e-300) / self.noise)

    @property
    def cosine(self) -> float:
        """Cosine similarity of x and y seen as two long vectors."""
        den = math.sqrt(self.signal * self.power)
        return self.dot / den if den > 0 else (1.0 if self.noise == 0 else 0.0)

    def to_dict(self) -> dict:
        return {"mse": self.mse, "sqnr_db": self.sqnr_db, "cosine": self.cosine}


def outlier_stats(x: torch.Tensor, k: float) -> dict:
    """Exact outlier figures of a whole tensor (weights): the share of values farther than
    ``k`` standard deviations from the mean, and max|x| / median|x|."""
    x = x.detach().double().flatten()
    mean, std = x.mean(), x.std(unbiased=False)
    a = x.abs()
    med = float(a.median())
    return {"outlier_ratio": float(((x - mean).abs() > k * std).double().mean()),
            "max_median_ratio": float(a.max()) / med if med > 0 else float("inf")}


class RunningStats:
    """Statistics of a stream of tensors whose last axis is the channel.

    Args:
        bins: histogram bins (even; the histogram spans ``[-R, R]`` and ``R`` doubles, two
            bins merging into one, whenever a value falls outside; a value exactly at ``R``
            falls in the last bin).
    """

    def __init__(self, bins: int = 256):
        if bins < 4 or bins % 4:
            raise ValueError(f"bins must be a multiple of 4 (>= 4); got {bins}")
        self.bins = bins
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.radius = 0.0
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.ch_min: torch.Tensor | None = None
        self.ch_max: torch.Tensor | None = None
        self.ch_clipped: torch.Tensor | None = None   # values clipped, per channel
        self.ch_count = 0                             # values per channel

    def _grow(self, amax: float) -> None:
        if self.radius == 0.0:
            self.radius = amax if amax > 0 else 1.0
            return
        while amax > self.radius:
            n = self.bins
            merged = self.hist.view(n // 2, 2).sum(1)        # width doubles
            self.hist = torch.zeros(n, dtype=torch.float64)
            self.hist[n // 4: n // 4 + n // 2] = merged       # old range is the middle half
            self.radius *= 2

    def update(self, x: torch.Tensor, clipped: torch.Tensor | None = None) -> None:
        """Add ``x`` (any shape, channel last); ``clipped``: bool mask of x's shape marking
        values the quantizer clipped."""
        x = x.detach().float()
        if x.numel() == 0:
            return
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
        xd = x2.double()
        self.count += x2.numel()
        self.sum += float(xd.sum())
        self.sumsq += float(xd.pow(2).sum())
        lo, hi = float(x2.min()), float(x2.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self._grow(max(-lo, hi))
        idx = ((xd + self.radius) * (self.bins / (2 * self.radius))).long()
        self.hist += torch.bincount(idx.clamp_(0, self.bins - 1).flatten(),
                                    minlength=self.bins).double()
        cmin, cmax = x2.amin(0), x2.amax(0)
        if self.ch_min is None:
            self.ch_min, self.ch_max = cmin, cmax
            self.ch_clipped = torch.zeros(x2.shape[1], dtype=torch.float64)
        else:
            self.ch_min, self.ch_max = torch.minimum(self.ch_min, cmin), torch.maximum(
                self.ch_max, cmax)
        self.ch_count += x2.shape[0]
        if clipped is not None:
            self.ch_clipped += clipped.reshape(x2.shape).double().sum(0)

    # -- derived figures ---------------------------------------------------------------

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        return math.sqrt(max(self.sumsq / self.count - self.mean ** 2, 0.0)) if self.count \
            else float("nan")

    def edges(self) -> torch.Tensor:
        return torch.linspace(-self.radius, self.radius, self.bins + 1, dtype=torch.float64)

    def outlier_ratio(self, k: float) -> float:
        """Share of values farther than ``k`` std from the mean (to one bin width)."""
        if not self.count:
            return float("nan")
        centers = (self.edges()[:-1] + self.edges()[1:]) / 2
        far = (centers - self.mean).abs() > k * self.std
        return float(self.hist[far].sum() / self.count)

    def abs_median(self) -> float:
        """Median of |x| from the histogram (to one bin width)."""
        centers = ((self.edges()[:-1] + self.edges()[1:]) / 2).abs()
        order = centers.argsort()
        cum = self.hist[order].cumsum(0)
        i = int(torch.searchsorted(cum, cum[-1] / 2))
        return float(centers[order][min(i, self.bins - 1)])

    def max_median_ratio(self) -> float:
        amax = max(-self.min, self.max)
        med = self.abs_median()
        return amax / med if med > 0 else float("inf")

    def channel_absmax(self) -> torch.Tensor:
        return torch.maximum(-self.ch_min, self.ch_max)

    def clipped_share(self) -> torch.Tensor:
        """Per channel: the share of its values that were clipped."""
        return self.ch_clipped / max(self.ch_count, 1)
