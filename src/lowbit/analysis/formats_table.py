"""Tables about formats and schemes: limits of every format, and the error each scheme makes."""

from __future__ import annotations

import torch

from .. import formats
from ..quant import Scheme, quantize

__all__ = ["DEMO_SCHEMES", "format_rows", "scheme_error_rows", "sqnr_db"]

DEMO_SCHEMES = [
    "int8", "int8:channel", "uint8:asym", "int4:channel", "int4:g128", "int4:g32:asym",
    "int2:g64", "ternary:channel", "binary:channel", "fp8_e4m3fn", "fp8_e5m2:channel",
    "mxfp8", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
    "mx9", "mx6", "mx4",
]


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2)."""
    noise = (x - x_hat).double().pow(2).sum()
    signal = x.double().pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(signal / noise))


def format_rows() -> list[dict]:
    """One row per format: bits, max, smallest normal and subnormal, NaN/Inf."""
    rows = []
    for name in formats.names():
        f = formats.get(name)
        rows.append({"format": name, "bits": f.bits, "max": float(f.max),
                     "min_normal": float(f.min_normal), "min_subnormal": float(f.min_subnormal),
                     "nan": f.has_nan, "inf": f.has_inf})
    return rows


def scheme_error_rows(x: torch.Tensor, schemes=DEMO_SCHEMES) -> list[dict]:
    """Quantize ``x`` with each scheme: SQNR (dB), max abs error, storage bits per element."""
    rows = []
    for text in schemes:
        q = quantize(x, Scheme.parse(text))
        y = q.dequantize()
        rows.append({"scheme": text, "sqnr_db": sqnr_db(x, y),
                     "max_abs_err": float((x - y).abs().max()),
                     "bits_per_elem": 8 * q.nbytes / x.numel()})
    return rows
