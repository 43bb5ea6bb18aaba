"""Fast int4-weight CPU paths: native A8W4 and torch's weight-only int4pack.

``cpu.a8w4.<isa>``  the native C kernel of :mod:`lowbit.kernels.native` (isa: avx512_vnni,
                    avx2, scalar), imported lazily: if it fails to import or build, this
                    path reports unsupported and the reference runs. It fuses dynamic
                    int8:token activation quantization and computes exactly what
                    :func:`reference.integer_reference` computes (bit for bit, fp32 output
                    included): acc_g int32 per group, t = sum_g float(acc_g) * s_w[n, g] in
                    order, y = t * s_x[m] + bias.
``cpu.w4.int4pack`` weight-only W4A16, M <= 128: ``torch.ops.aten._weight_int4pack_mm_for_cpu``
                    with bf16/fp16 activations; it dequantizes as ``(u - 8) * s + zero``
                    (u = the code as 0..15) with s and zero rounded to the activation dtype
                    (bf16: relative error <= 2^-9 per weight), fp32 accumulation.
``cpu.w8.int8pack`` weight-only W8A16, M <= 128, symmetric int8 per channel (or tensor):
                    ``torch.ops.aten._weight_int8pack_mm`` on bf16/fp16 activations, i.e.
                    sum_k x * q in fp32, times s[n] rounded to the activation dtype
                    (relative error <= 2^-9 for bf16), output rounded once. At M = 1 it is
                    75x faster than decoding the weight on every call (0.44 vs 33 ms for
                    4096 x 4096, bf16) and 3x faster than a dense bf16 GEMM.
``cpu.w4.dequant``  weight-only W4A16 for M > 128, and other W8A16: the weight decoded
``cpu.w8.dequant``  to bf16/fp16 on every call ((q - z) * s rounded once to the activation
                    dtype), then the oneDNN bf16/fp16 GEMM (fp32 accumulation). Nothing but
                    the integer codes is kept.
W4A32/W8A32 (fp32 activations) run the reference: torch's fp32 int4pack and int8pack kernels
are 10-100x slower than decoding and using the fp32 GEMM.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import Rounding
from ..quant import PerChannel, PerGroup, PerTensor, PerToken, QTensor
from .problem import Problem

__all__ = [
    "a8w4_linear",
    "a8w4_name",
    "a8w4_supports",
    "dequant_linear",
    "dequant_supports",
    "native_module",
    "w4_linear",
    "w4_supports",
    "w8_linear",
    "w8_supports",
]

SMALL_M = 128  # int4pack / int8pack up to this many rows, decode + GEMM above (measured)

_NATIVE: dict[str, object] = {}


def native_module():
    """The native kernel module when it imports and a compiled path runs, else None."""
    if "mod" not in _NATIVE:
        try:
            from . import native

            _NATIVE["mod"] = native if native.available() else None
        except Exception:  # noqa: BLE001 - a broken native build must never break kernels
            _NATIVE["mod"] = None
    return _NATIVE["mod"]


def a8w4_name() -> str:
    mod = native_module()
    return f"cpu.a8w4.{mod.isa()}" if mod is not None else "cpu.a8w4.native"


def _group(w: QTensor) -> int | None:
    """K extent of one weight scale (K for per-channel / per-tensor), None if unusable."""
    g, k = w.scheme.granularity, w.shape[1]
    if isinstance(g, PerGroup):
        return g.size if k % g.size == 0 else None
    return k if g in (PerChannel(0), PerTensor()) else None


def _int4_weight(w) -> bool:
    return isinstance(w, QTensor) and w.scheme.format.name in ("int4", "uint4") \
        and _group(w) is not None


def a8w4_supports(p: Problem) -> bool:
    s = p.act
    if s is None or p.act_qparams is not None or not _int4_weight(p.w.weight):
        return False
    if not (s.format.name == "int8" and s.symmetric and s.granularity == PerToken()
            and isinstance(p.x, Tensor)):
        return False
    g, k = _group(p.w.weight), p.k
    return k % 2 == 0 and (g % 8 == 0 or g == k) and native_module() is not None


def _pack_native(w: QTensor):
    n, k = w.shape
    g = _group(w)
    scales = w.scale.float().reshape(n, -1).expand(n, k // g).contiguous()
    codes, zp = w.codes, w.zero_point
    if w.scheme.format.signed and zp is not None:  # signed asym: u = q + 8, z' = z + 8
        codes, zp = codes ^ 0x88, zp + 8
    if not w.scheme.format.signed and zp is None:  # uint4 symmetric: zero point 0
        zp = torch.zeros(n, 1, dtype=torch.int32)
    if zp is not None:
        zp = zp.reshape(n, -1).expand(n, k // g).contiguous()
    return native_module().pack_a8w4(codes, scales, zp, group_size=g)


def a8w4_linear(p: Problem) -> Tensor:
    packed = p.w.form("cpu.a8w4", _pack_native)
    bias = None if p.bias is None else p.bias.float()
    return native_module().a8w4_linear(p.x.float().contiguous(), packed, bias, x_mul=p.x_mul)


# -- weight-only int4 (torch's int4pack) ----------------------------------------------------

def _int4pack_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def _a16(p: Problem) -> bool:
    """16-bit float activations, output in their dtype rounded to nearest even (these paths
    round the output themselves, inside torch's kernel)."""
    return (p.act is None and isinstance(p.x, Tensor) and p.x.dtype != torch.float32
            and p.out_dtype == p.x.dtype and p.rounding is Rounding.NEAREST_EVEN)


def _w4a16(p: Problem) -> bool:
    return _a16(p) and _int4_weight(p.w.weight)


def _w8a16(p: Problem) -> bool:
    w = p.w.weight
    return (_a16(p) and isinstance(w, QTensor) and w.scheme.format.name in ("int8", "uint8")
            and _group(w) is not None)


def w4_supports(p: Problem) -> bool:
    if p.m > SMALL_M or not _w4a16(p):
        return False
    g = _group(p.w.weight)
    return _int4pack_available() and g in (32, 64, 128, 256) and p.k % g == 0


def w8_supports(p: Problem) -> bool:
    w = p.w.weight
    return (p.m <= SMALL_M and _w8a16(p) and w.scheme.format.name == "int8"
            and w.zero_point is None and w.scheme.granularity in (PerChannel(0), PerTensor())
            and hasattr(torch.ops.aten, "_weight_int8pack_mm"))


def _scales_per_row(w: QTensor) -> Tensor:
    return w.scale.float().reshape(-1).expand(w.shape[0]).contiguous()


def w8_linear(p: Problem) -> Tensor:
    w = p.w.weight
    s = p.w.form("cpu.w8.int8pack", _scales_per_row)
    y = torch.ops.aten._weight_int8pack_mm(p.x, w.codes.view(torch.int8), s.to(p.x.dtype))
    return _with_bias(y, p)


def dequant_supports(p: Problem) -> bool:
    return _w4a16(p) or _w8a16(p)


def _decode(w: QTensor, dtype: torch.dtype) -> Tensor:
    """(q - z) * s of an int4/uint4/int8/uint8 weight [N, K], rounded once to ``dtype``."""
    n, k = w.shape
    c, g = w.codes, _group(w)
    if w.scheme.format.bits == 8:
        v = c.view(torch.int8) if w.scheme.format.signed else c
    else:
        u = torch.stack((c & 0x0F, c >> 4), dim=-1).reshape(n, -1)
        v = (u ^ 0x08).view(torch.int8) - 8 if w.scheme.format.signed else u
    v = v[:, :k].reshape(n, k // g, g).float()
    if w.zero_point is not None:
        v = v - w.zero_point.float().reshape(-1, k // g, 1)
    return v.mul_(w.scale.float().reshape(-1, k // g, 1)).reshape(n, k).to(dtype)


def _with_bias(y: Tensor, p: Problem) -> Tensor:
    """Bias added in fp32 to the 16-bit GEMM output, then rounded again (<= 1 ulp total)."""
    return y if p.bias is None else (y.float() + p.bias.float()).to(p.out_dtype)


def dequant_linear(p: Problem) -> Tensor:
    return _with_bias(torch.nn.functional.linear(p.x, _decode(p.w.weight, p.x.dtype)), p)


def _pack_int4pack(w: QTensor):
    n, k = w.shape
    g = _group(w)
    u = w.int_values().to(torch.int32)  # the codes as numbers: -8..7 or 0..15
    s = w.scale.float().expand(n, k // g)  # [N, K/g], per tensor included
    z = torch.zeros_like(s) if w.zero_point is None else w.zero_point.float().expand(n, k // g)
    if w.scheme.format.signed:
        u = u + 8  # (u - 8) * s + zero == (q - z) * s with zero = -z * s
        zero = -z * s
    else:  # (u - z) * s == (u - 8) * s + (8 - z) * s
        zero = (8 - z) * s
    pad = -n % 16  # the kernel wants N a multiple of 16: zero rows, sliced off after
    u, s, zero = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (u, s, zero))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1)
    sz = torch.stack([s.T, zero.T], dim=-1).contiguous()  # [K/g, N', 2]
    return packed, sz, g


def w4_linear(p: Problem) -> Tensor:
    packed, sz, g = p.w.form("cpu.w4.int4pack", _pack_int4pack)
    dt = p.x.dtype
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(p.x, packed, g, sz.to(dt))
    if y.shape[1] != p.n:
        y = y[:, : p.n]
    return _with_bias(y, p)
