"""Calibration: streaming observers that turn data into ranges, and range searches.

>>> obs = lb.calib.Histogram(method="entropy")     # MinMax, MovingAverage, Percentile too
>>> for batch in batches: obs.update(batch)
>>> lo, hi = obs.range(); q = lb.quantize(x, "int8", obs.qparams("int8"))
>>> qp = lb.calib.mse_search(w, "int4:g128")        # weights: MSE-clipped groups
>>> s = lb.calib.choose_symmetry(act, "int8")       # int8 or int8:asym, by a stated rule

Observers take ``axis=None`` (per tensor) or a channel axis; NaN/Inf in a batch raise
ValueError, empty batches are skipped with a warning, and ``range()`` before any batch
raises RuntimeError.
"""

from .entropy import entropy_threshold, kl_divergences
from .histogram import Histogram, Percentile
from .mse import fake_quant_grid, mse_range_from_histogram, mse_search
from .observer import MinMax, MovingAverage, Observer
from .symmetry import choose_symmetry, tensor_stats

__all__ = [
    "Histogram", "MinMax", "MovingAverage", "Observer", "Percentile", "choose_symmetry",
    "entropy_threshold", "fake_quant_grid", "kl_divergences", "mse_range_from_histogram",
    "mse_search", "tensor_stats",
]
