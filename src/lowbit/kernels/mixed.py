"""Mixed precision: fp16/bf16 operands, fp32 accumulation, output rounding modes.

Every path produces an fp32 result first (or, for the bf16 fast path, rounds to bf16
inside the GEMM); :func:`round_output` then takes it to the output dtype with one of the
rounding modes (Ascend names): nearest_even (CAST_RINT), nearest_away (CAST_ROUND),
toward_zero (CAST_TRUNC), floor (CAST_FLOOR), ceil (CAST_CEIL), odd (CAST_ODD).

Example, fp32 -> bf16 (8 significant bits): 1 + 2^-8 lies halfway between 1 and 1 + 2^-7:
nearest_even -> 1, nearest_away -> 1 + 2^-7, toward_zero/floor -> 1, ceil -> 1 + 2^-7,
odd -> 1 + 2^-7 (the neighbour with an odd last bit). Overflow follows IEEE 754: Inf for
nearest modes and odd, the largest finite value for the directed modes that round
toward zero.

The one rounding implementation of the project is ``lb.formats.get(...).round``; the
nearest-even mode uses torch's cast, which is the same IEEE operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import formats
from ..formats import Rounding
from .problem import Problem

__all__ = ["bf16_linear", "bf16_supports", "round_output"]

_FORMAT_OF = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def round_output(y: Tensor, dtype: torch.dtype, rounding: Rounding) -> Tensor:
    """fp32 ``y`` rounded to ``dtype`` (float32, float16 or bfloat16) under ``rounding``."""
    if dtype == torch.float32 or y.dtype == dtype:
        return y
    if rounding is Rounding.NEAREST_EVEN:
        return y.to(dtype)
    return formats.get(_FORMAT_OF[dtype]).round(y, rounding, saturate=False).to(dtype)


def bf16_supports(p: Problem) -> bool:
    """bf16 x, w (and bias), bf16 output rounded to nearest even: oneDNN's bf16 GEMM."""
    w = p.w.weight
    return (p.x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
            and (p.bias is None or p.bias.dtype == torch.bfloat16)
            and p.out_dtype == torch.bfloat16 and p.rounding is Rounding.NEAREST_EVEN)


def bf16_linear(p: Problem) -> Tensor:
    """oneDNN bf16 GEMM (torch's): bf16 products, fp32 accumulation, one rounding to bf16
    at the end (the bias is added to the fp32 accumulator, then rounded with it)."""
    return F.linear(p.x, p.w.weight, p.bias)
