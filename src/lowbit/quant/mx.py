"""Block-scaled formats: OCP MX (e8m0 scales), shared micro-exponents (MX9/6/4) and NVFP4.

Scale rules follow OCP MX v1.0 and torchao's emulation bit for bit (FLOOR is the default):
the block exponent is taken from the exponent bits of the block's amax, never from a
floating-point log2. Worked example, mxfp4 (e2m1, emax_elem 2), block amax 7.0:
floor(log2 7) = 2, scale 2^(2-2) = 1; elements 5.0 -> 4 (tie to even), 7.0 -> 6 (clamped).

Integer elements (MXINT8, MX9/6/4) are fixed point 1.(bits-2): int8 code 64 means 1.0,
the range is symmetric (+-127/64 for int8), and emax_elem is 0.

Non-finite input: a block holding NaN or Inf gets the NaN scale (e8m0 0xFF) and zero
codes, so the whole block decodes to NaN (OCP: the block is NaN). torchao instead
saturates Inf elements; finite inputs agree exactly.
"""

from __future__ import annotations

import torch

from ..formats import FloatFormat, IntFormat
from .scheme import ScaleMode, Scheme

__all__ = [
    "F32_MIN_NORMAL",
    "element_emax",
    "element_max",
    "multiplier",
    "mx_decode",
    "mx_encode",
    "nvfp4_decode",
    "nvfp4_encode",
    "nvfp4_tensor_scale",
]

F32_MIN_NORMAL = 2.0**-126
_E4M3_MAX = 448.0
_E4M3_TINY = 2.0**-6  # torch.finfo(torch.float8_e4m3fn).tiny


def element_emax(fmt) -> int:
    return fmt.emax if isinstance(fmt, FloatFormat) else 0


def element_max(fmt) -> float:
    if isinstance(fmt, FloatFormat):
        return fmt.max
    return fmt.max / 2.0 ** (fmt.bits - 2)


def _element_mbits(fmt) -> int:
    return fmt.mantissa_bits if isinstance(fmt, FloatFormat) else fmt.bits - 2


def _exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for float32 a >= 0 read from the exponent bits (-127 for 0/subnormals)."""
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


def _encode_elements(y: torch.Tensor, fmt, rounding) -> torch.Tensor:
    """Scaled values -> element codes (uint8), clamped to the element's range."""
    if isinstance(fmt, IntFormat):
        step = 2.0 ** (fmt.bits - 2)
        q = fmt.round(y * step, rounding).clamp_(-fmt.max, fmt.max)  # symmetric (narrow)
        return (q.to(torch.int16) & ((1 << fmt.bits) - 1)).to(torch.uint8)
    return fmt.encode(y, rounding, saturate=True)


def _decode_elements(codes: torch.Tensor, fmt) -> torch.Tensor:
    vals = fmt.decode(codes)
    if isinstance(fmt, IntFormat):
        vals = vals * 2.0 ** -(fmt.bits - 2)
    return vals


def _scale_exponent(amax: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Unbiased block exponent E (int32) for FLOOR / CEIL / EVEN."""
    fmt, mode = scheme.format, scheme.scale_mode
    bits = amax.view(torch.int32)
    if mode is ScaleMode.EVEN:  # round amax to the element's mantissa width first
        bits = (bits + (1 << (23 - _element_mbits(fmt) - 1))) & 0x7F800000
    e = ((bits >> 23) & 0xFF) - 127
    if mode is ScaleMode.CEIL:
        e = e + ((bits & 0x7FFFFF) > 0).to(torch.int32)
    return e - element_emax(fmt)


def mx_encode(x: torch.Tensor, scheme: Scheme):
    """x [..., K] (K a multiple of the block) -> (codes [..., K] uint8, scale e8m0 codes
    [..., K/block] uint8, micro-exponents [..., K/micro_block] uint8 (0/1) or None)."""
    fmt, block = scheme.format, scheme.granularity.size
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    bad = ~torch.isfinite(amax)
    if scheme.scale_mode is ScaleMode.RCEIL:
        descale = amax / element_max(fmt)
        biased = (torch.ceil(torch.log2(descale)).clamp(-127, 127) + 127).to(torch.int32)
        # torchao's rule: a zero exponent multiplies by 1.0 instead of 2^127.
        rcp = torch.where(biased == 0, 1.0, torch.exp2(127 - biased.float()))
        y = xb * rcp
        micro = None
    else:
        E = _scale_exponent(amax, scheme).clamp(-127, 127)
        biased = E + 127
        if scheme.micro_block:
            pairs = xb.reshape(*xb.shape[:-1], block // scheme.micro_block, scheme.micro_block)
            e_sub = _exponent(pairs.abs().amax(-1))
            micro = (e_sub < _exponent(amax)).to(torch.int32)  # shift the pair down by one
            div = torch.exp2((E - micro).float()).clamp(min=F32_MIN_NORMAL)
            y = (pairs / div.unsqueeze(-1)).reshape(xb.shape)
            micro = micro.to(torch.uint8)
        else:
            micro = None
            # torchao divides by at least the smallest normal float32 (2^-126).
            div = torch.exp2(E.float()).clamp(min=F32_MIN_NORMAL)
            y = xb / div
    y = torch.where(bad, 0.0, y)
    codes = _encode_elements(y, fmt, scheme.rounding).reshape(x.shape)
    scale = torch.where(bad, 255, biased).to(torch.uint8).squeeze(-1)
    if micro is not None:
        micro = micro.reshape(*x.shape[:-1], -1)
    return codes, scale, micro


def multiplier(scale, micro, tensor_scale, scheme: Scheme) -> torch.Tensor:
    """The factor each element's decoded value is multiplied by, one per element:
    2^(E - micro) for MX (NaN for a NaN scale), e4m3 block scale * tensor scale for NVFP4."""
    block = scheme.granularity.size
    if scheme.scale_format.name == "fp8_e4m3fn":
        s = scale.view(torch.float8_e4m3fn).float() * tensor_scale
    else:
        s = torch.where(scale == 255, torch.nan, torch.exp2(scale.to(torch.int32).float() - 127))
    s = s.repeat_interleave(block, dim=-1)
    if micro is not None:
        s = s * torch.exp2(-micro.float()).repeat_interleave(scheme.micro_block, dim=-1)
    return s


def mx_decode(codes, scale, micro, scheme: Scheme) -> torch.Tensor:
    """Inverse of ``mx_encode``: exact (every factor is a power of two)."""
    return _decode_elements(codes, scheme.format) * multiplier(scale, micro, None, scheme)


# Tensor scales below this would make 1 / ts overflow float32 in nvfp4_encode; a tensor
# that small (amax < ~2^-110) gets this scale and its blocks round to zero or tiny codes.
NVFP4_MIN_TENSOR_SCALE = 2.0**-120


def nvfp4_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """The fp32 tensor scale amax / (448 * 6) (1.0 for an all-zero tensor; at least
    ``NVFP4_MIN_TENSOR_SCALE`` so its reciprocal stays finite)."""
    amax = x.abs().amax().float()
    ts = torch.where(amax > 0, amax / (_E4M3_MAX * 6.0), 1.0)
    return ts.clamp(min=NVFP4_MIN_TENSOR_SCALE)


def nvfp4_encode(x: torch.Tensor, scheme: Scheme, tensor_scale: torch.Tensor | None = None):
    """NVFP4 as torchao's two-level ``nvfp4_quantize``: e2m1 elements in blocks of 16,
    e4m3 block scales = (block amax / 6) / tensor scale, multiplied by reciprocals.

    Returns (codes uint8 [..., K], e4m3 scale codes uint8 [..., K/16], tensor scale fp32).
    """
    fmt, block = scheme.format, scheme.granularity.size
    if tensor_scale is None:
        ts = nvfp4_tensor_scale(x)
    else:
        ts = tensor_scale.float().reshape(()).clamp(min=NVFP4_MIN_TENSOR_SCALE)
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    block_scale = xb.abs().amax(-1) / fmt.max
    s8 = torch.clamp(block_scale / ts, min=_E4M3_TINY, max=_E4M3_MAX).to(torch.float8_e4m3fn)
    recip = (1.0 / ts) / s8.float()
    y = torch.clamp(xb * recip.unsqueeze(-1), -fmt.max, fmt.max)
    codes = fmt.encode(y, scheme.rounding, saturate=True).reshape(x.shape)
    return codes, s8.view(torch.uint8), ts


def nvfp4_decode(codes, scale, tensor_scale, scheme: Scheme) -> torch.Tensor:
    return scheme.format.decode(codes) * multiplier(scale, None, tensor_scale, scheme)
