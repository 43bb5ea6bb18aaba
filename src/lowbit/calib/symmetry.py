"""The asymmetric optimizer: choose symmetric or asymmetric quantization from statistics.

Rule (``choose_symmetry``), for integer formats (float formats are always symmetric):

    asymmetric  if  share_above_zero >= 0.99  or  share_above_zero <= 0.01   (one-sided)
                or  imbalance <= 0.5
    symmetric   otherwise

where ``imbalance = min(-lo_e, hi_e) / max(-lo_e, hi_e)`` over the *effective* range
``lo_e = max(min, mean - 4 std)``, ``hi_e = min(max, mean + 4 std)`` (and 0 kept inside).

Why: a symmetric grid spends its levels on ``[-a, a]`` with ``a = max(-lo_e, hi_e)``; an
asymmetric one spends the same number on ``[lo_e, hi_e]``. Its step is smaller by
``2 / (1 + imbalance)``, so its rounding error (``step**2 / 12`` per value) is smaller by
``(2 / (1 + imbalance))**2``: at ``imbalance = 0.5`` that is 1.78x, worth a zero point
(one more term in the GEMM); above it the gain fades (1.23x at 0.8) and is not worth it.
``mean +- 4 std`` stands for the range an MSE search keeps: a few far outliers (a max 20
std out) are clipped by the search and must not decide the shape. One-sided data (post-
ReLU, post-softmax, attention probabilities) loses half the grid when symmetric: always
asymmetric. Skewness is reported by ``tensor_stats`` for the record; it points the same
way as the imbalance but does not say how much range is wasted, so the rule does not use it.

Post-GELU activations (min about -0.17, a long positive tail) and post-softmax (all >= 0)
come out asymmetric; Gaussian-like weights symmetric. Then search the clip range with
MSE: ``Histogram(method="mse").qparams(chosen)`` or ``mse_search(w, chosen)``.
"""

from __future__ import annotations

import torch

from ..formats import IntFormat
from ..quant import Scheme

__all__ = ["choose_symmetry", "tensor_stats"]

ONE_SIDED = 0.99
IMBALANCE = 0.5
STD_RANGE = 4.0


def tensor_stats(x: torch.Tensor) -> dict[str, float]:
    """min, max, mean, std, skewness and share of values above zero of ``x`` (floats)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError("tensor_stats: x must be a non-empty floating torch.Tensor")
    v = x.detach().double().reshape(-1)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"tensor_stats: x holds {int((~torch.isfinite(v)).sum())} NaN/Inf values")
    mean, std = float(v.mean()), float(v.std(unbiased=False))
    skew = float(((v - mean) ** 3).mean() / std**3) if std > 0 else 0.0
    return {"min": float(v.min()), "max": float(v.max()), "mean": mean, "std": std,
            "skewness": skew, "above_zero": float((v > 0).double().mean())}


def imbalance(stats: dict[str, float]) -> float:
    """``min(-lo_e, hi_e) / max(-lo_e, hi_e)`` of the effective range (1 = balanced)."""
    lo = min(0.0, max(stats["min"], stats["mean"] - STD_RANGE * stats["std"]))
    hi = max(0.0, min(stats["max"], stats["mean"] + STD_RANGE * stats["std"]))
    big = max(-lo, hi)
    return min(-lo, hi) / big if big > 0 else 1.0


def choose_symmetry(x: torch.Tensor | dict, scheme: Scheme | str) -> Scheme:
    """``scheme`` made symmetric or asymmetric by the rule in this module's docstring.

    Args:
        x: the tensor, or its ``tensor_stats`` dict.
        scheme: the scheme to adjust (its other fields are kept).

    >>> choose_symmetry(torch.softmax(torch.randn(8, 128), -1), "int8")   # int8:asym
    """
    scheme = Scheme.parse(scheme)
    if not isinstance(scheme.format, IntFormat) or scheme.is_block_scaled:
        return scheme.with_(symmetric=True) if not scheme.is_block_scaled else scheme
    stats = x if isinstance(x, dict) else tensor_stats(x)
    p = stats["above_zero"]
    asym = p >= ONE_SIDED or p <= 1 - ONE_SIDED or imbalance(stats) <= IMBALANCE
    return scheme.with_(symmetric=not asym)
