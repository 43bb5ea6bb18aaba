"""Dynamic precision selection: pick fp32 / bf16 / fp16 / fp8_e4m3fn / int8 for a tensor.

The seed's ``DynamicPrecisionSelector`` made sound and documented. Statistics (on the
nonzero elements: zeros are exact in every format, so they never decide):

* ``amax``: the largest |x|;
* ``rms``: the root mean square of the nonzero elements;
* ``large_share``: the fraction of nonzero elements with |x| > 8 * rms (outliers);
* ``dynamic_range_bits``: log2(amax / p1), p1 the 1st percentile of nonzero |x| (the
  binades a format must span to keep 99 % of the values away from zero);
* ``sparsity``: the fraction of exact zeros.

The rule, first match wins (``op`` is the operation the tensor feeds):

1. any NaN/Inf -> ``fp32`` (nothing narrower is safe);
2. ``op`` in softmax / norm / reduction / loss -> ``fp32`` (long sums and exponentials);
3. every element zero -> ``int8``;
4. matmul / linear / conv (scaled formats, so amax itself does not matter):
   ``int8`` (per-token scales) when large_share == 0, i.e. amax <= 8 * rms: the int8
   step amax/127 is then <= rms/16, an SQNR of at least 6.02 * 8 + 4.77 - 20 log10(8)
   = 34.8 dB; else ``fp8_e4m3fn`` (per-tensor scale mapping amax to 448) when
   dynamic_range_bits <= 15: e4m3's normal values span 2**-6 .. 448, 15 binades;
5. amax > 65504 (fp16's max) -> ``bf16`` (fp16 would overflow);
6. ``fp16`` when p1 >= 2**-14 (fp16's smallest normal: 99 % of the values keep their
   11-bit precision), else ``bf16``.

>>> select_precision(torch.randn(64, 256), "matmul").precision      # Gaussian: no outliers
'int8'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["OPS", "PRECISIONS", "Choice", "PrecisionStats", "precision_stats",
           "select_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "fp8_e4m3fn", "int8")
# op name -> class: "gemm" (may go to 8 bits), "elementwise" (float only), "sensitive" (fp32)
OPS = {"matmul": "gemm", "linear": "gemm", "conv": "gemm",
       "elementwise": "elementwise", "activation": "elementwise", "add": "elementwise",
       "softmax": "sensitive", "norm": "sensitive", "reduction": "sensitive",
       "loss": "sensitive"}

_FP16_MAX = 65504.0
_FP16_MIN_NORMAL = 2.0 ** -14
_LARGE = 8.0          # "large" = beyond 8x the RMS
_FP8_BINADES = 15.0   # e4m3fn normal range 2^-6 .. 448
_SAMPLE = 1 << 16     # elements used for the 1st percentile


@dataclass(frozen=True)
class PrecisionStats:
    """What the rule looks at (see the module docstring); floats, 0 for an empty/zero set."""

    amax: float
    rms: float
    large_share: float
    dynamic_range_bits: float
    sparsity: float
    p1: float
    finite: bool


@dataclass(frozen=True)
class Choice:
    """A selection: ``precision`` (one of PRECISIONS), the rule's ``reason``, the stats."""

    precision: str
    reason: str
    stats: PrecisionStats

    def __str__(self) -> str:
        return self.precision


@torch.no_grad()
def precision_stats(x: torch.Tensor) -> PrecisionStats:
    """The statistics of ``x`` the selector uses."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating torch.Tensor")
    if x.numel() == 0:
        raise ValueError("x is empty: nothing to select a precision for")
    a = x.detach().float().abs().flatten()
    finite = bool(torch.isfinite(a).all())
    if not finite:
        return PrecisionStats(math.inf, math.nan, math.nan, math.inf, 0.0, math.nan, False)
    nz = a[a > 0]
    sparsity = 1.0 - nz.numel() / a.numel()
    if nz.numel() == 0:
        return PrecisionStats(0.0, 0.0, 0.0, 0.0, sparsity, 0.0, True)
    amax = float(nz.max())
    rms = float(nz.double().pow(2).mean().sqrt())
    large = float((nz > _LARGE * rms).double().mean())
    sample = nz[:: max(1, nz.numel() // _SAMPLE)]
    p1 = float(torch.kthvalue(sample, max(1, int(0.01 * sample.numel()))).values)
    return PrecisionStats(amax, rms, large, math.log2(amax / p1), sparsity, p1, True)


def select_precision(x: torch.Tensor, op: str = "matmul") -> Choice:
    """Choose fp32 / bf16 / fp16 / fp8_e4m3fn / int8 for ``x`` feeding ``op``.

    Args:
        x: the tensor (an activation or a weight).
        op: one of ``OPS`` (``matmul``, ``linear``, ``conv``, ``elementwise``,
            ``activation``, ``add``, ``softmax``, ``norm``, ``reduction``, ``loss``).
    Returns:
        A ``Choice``; ``str(choice)`` is the precision. The rule is in the module docstring.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    kind = OPS[op]
    st = precision_stats(x)
    if not st.finite:
        return Choice("fp32", "holds NaN/Inf", st)
    if kind == "sensitive":
        return Choice("fp32", f"{op} needs fp32 (long sums, exponentials)", st)
    if st.amax == 0:
        return Choice("int8", "all zeros", st)
    if kind == "gemm":
        if st.large_share == 0:
            return Choice("int8", f"no outliers (amax = {st.amax / st.rms:.1f} x rms <= 8)", st)
        if st.dynamic_range_bits <= _FP8_BINADES:
            return Choice("fp8_e4m3fn", f"{st.large_share:.2%} outliers; dynamic range "
                          f"{st.dynamic_range_bits:.1f} binades <= 15", st)
    if st.amax > _FP16_MAX:
        return Choice("bf16", f"amax {st.amax:.3g} > fp16 max 65504", st)
    if st.p1 >= _FP16_MIN_NORMAL:
        return Choice("fp16", f"within fp16's normal range (p1 {st.p1:.3g} >= 2^-14)", st)
    return Choice("bf16", f"small values (p1 {st.p1:.3g} < 2^-14) need bf16's range", st)
