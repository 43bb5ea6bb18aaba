"""Fast int8 CPU paths: A8W8.

``cpu.a8w8.<isa>``   the native C kernel of :mod:`lowbit.kernels.native.a8w8` (quantization,
                     VNNI GEMM and epilogue fused; runs where isa is avx512_vnni) for
                     dynamic int8:token, or given / static int8 or uint8 codes with one
                     scale (and zero point) per row or per tensor.
``cpu.int8.int_mm``  ``torch._int_mm`` (oneDNN/MKL s8 x s8 -> s32) and a torch epilogue.

What the A8W8 paths compute (identical to :func:`reference.integer_reference` bit for bit,
int32 accumulator and fp32 output alike)::

    qx, sx = per-row int8 (dynamic int8:token, fused here) or the given / static codes
    acc    = sum_k a'[m, k] * w[n, k]  - ca[m] * sum_k w[n, k]       int32, exact
    y      = (float(acc) * sw[n]) * sx[m]  (+ bias)                   fp32

where ``a'`` are the activation codes as int8 (uint8 codes shifted by -128) and ``ca`` the
matching offset (the zero point, minus 128 for uint8). Weights: symmetric int8, one scale
per output channel or per tensor. Anything else falls back to the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import IntFormat, Rounding
from ..quant import PerChannel, PerGroup, PerTensor, PerToken, QTensor
from .cpu_int4 import native_module
from .problem import Problem
from .reference import INT32_MAX

__all__ = ["a8w8_accumulators", "a8w8_linear", "a8w8_name", "a8w8_supports", "int_mm_linear",
           "int_mm_supports", "native_accumulators", "quantize_rows"]

_TINY = torch.finfo(torch.float32).tiny


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric int8 per row, exactly ``lb.quantize(x, "int8:token")``.

    Returns (codes int8 [M, K], scales fp32 [M, 1]); s = amax / 127 (1 for an all-zero
    row), q = round_half_even(x / s). No clamp is needed: s = fl(amax / 127) is within
    2^-24 of amax / 127, so |x / s| <= 127 * (1 + 2^-23) < 127.5 rounds to at most 127.
    Three passes over x, one temporary (the quotient, rounded in place).
    """
    x = x.float()
    amax = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True)
    s = torch.where(amax > 0, (amax / 127).clamp_(min=_TINY), 1.0)
    return torch.div(x, s).round_().to(torch.int8), s


def _weight_ok(w) -> bool:
    if not isinstance(w, QTensor):
        return False
    s = w.scheme
    return (s.format.name == "int8" and s.symmetric
            and (s.granularity == PerChannel(0) or s.granularity == PerTensor()))


def _act_form(p: Problem) -> str | None:
    """"dynamic" (int8:token fused here), "codes" (int8 codes, per-row or per-tensor
    scales), or None when the fast paths do not apply. Computed once per problem (the
    supports checks and the run all ask)."""
    if "_int8_form" not in p.__dict__:
        p._int8_form = _form_of(p)
    return p._int8_form


def _form_of(p: Problem) -> str | None:
    s = p.act_scheme
    if s is None or not isinstance(s.format, IntFormat) or s.format.bits != 8:
        return None
    if isinstance(s.granularity, PerGroup):
        return None
    if p.act is not None and s.symmetric and s.format.signed and p.act_qparams is None \
            and s.granularity == PerToken():
        return "dynamic"
    if isinstance(p.x, QTensor) and len(p.x.shape) != 2 and isinstance(s.granularity,
                                                                        PerChannel):
        return None
    return "codes"


def _bound_ok(p: Problem) -> bool:
    s = p.act_scheme
    a = (s.format.max - s.format.min) if not s.symmetric else 128
    return p.k * 128 * 127 <= INT32_MAX and p.k * a * 127 <= INT32_MAX


def int_mm_supports(p: Problem) -> bool:
    return _weight_ok(p.w.weight) and _act_form(p) is not None and _bound_ok(p)


def _activation(p: Problem):
    """(a' int8 [M, K], offset ca int32 [M, 1] or None, scales fp32 [M, 1] or [1, 1])."""
    if _act_form(p) == "dynamic":
        q, s = quantize_rows(p.x)
        return q, None, s
    xq = p.xq
    codes = xq.codes.reshape(p.m, p.k)
    scale = xq.scale.float().reshape(-1, 1)
    zp = None if xq.zero_point is None else xq.zero_point.reshape(-1, 1).to(torch.int32)
    if xq.scheme.format.signed:
        return codes.view(torch.int8), zp, scale
    ca = (zp if zp is not None else torch.zeros(1, 1, dtype=torch.int32)) - 128
    return (codes ^ 0x80).view(torch.int8), ca, scale


def _weight_scale(p: Problem) -> Tensor:
    return p.w.weight.scale.float().reshape(-1)


def _wsum(w: QTensor) -> Tensor:
    return w.codes.view(torch.int8).sum(dim=1, dtype=torch.int32)


def a8w8_accumulators(p: Problem) -> Tensor:
    """The exact int32 accumulator [M, N] of the ``cpu.int8.int_mm`` path (test hook)."""
    p.apply_x_mul()
    a, ca, _ = _activation(p)
    return _int_mm_acc(p, a, ca)


def _int_mm_acc(p: Problem, a: Tensor, ca) -> Tensor:
    w = p.w.weight
    acc = torch._int_mm(a, w.codes.view(torch.int8).t())
    if ca is not None:  # int32 wraps modulo 2^32; the true result fits, so it is exact
        acc -= ca * p.w.form("wsum", _wsum)
    return acc


def int_mm_linear(p: Problem) -> Tensor:
    a, ca, sx = _activation(p)
    y = torch.mul(_int_mm_acc(p, a, ca), _weight_scale(p))  # float(acc) * sw[n], one pass
    y.mul_(sx)  # then * sx[m], in place
    return y if p.bias is None else y.add_(p.bias.float())


# -- the native kernel -------------------------------------------------------------------------

def _native_a8w8():
    """The native module when its A8W8 VNNI path runs here (slower paths lose to int_mm)."""
    mod = native_module()
    return mod if mod is not None and mod.a8w8_isa() == "avx512_vnni" else None


def a8w8_name() -> str:
    mod = native_module()
    return f"cpu.a8w8.{mod.a8w8_isa()}" if mod is not None else "cpu.a8w8.native"


def _native_form(p: Problem) -> str | None:
    """"dynamic", "codes" (one scale and zero point per row or per tensor) or None."""
    form = _act_form(p)
    if form != "codes":
        return form
    static = _static_args(p)  # checked without quantizing x (the kernel will)
    if static is not None:
        asym = static[1] != static[4]
    else:
        xq = p.xq
        asym = xq.zero_point is not None or not xq.scheme.format.signed
        if xq.scale.numel() not in (1, p.m) or (xq.zero_point is not None and
                                                xq.zero_point.numel() not in (1, p.m)):
            return None
    return None if asym and p.k * 255 * 128 > INT32_MAX else form


def a8w8_supports(p: Problem) -> bool:
    return int_mm_supports(p) and _native_form(p) is not None and _native_a8w8() is not None


def _pack(w: QTensor):
    return native_module().pack_a8w8(w.codes.view(torch.int8), w.scale.float())


def _static_args(p: Problem):
    """(scale, zero point, qmin, qmax, offset) when float x is to be quantized with a
    static per-tensor int8 / uint8 scheme rounding to nearest even (fused in the kernel).
    Worked out once per problem, like :func:`_act_form`."""
    if "_int8_static" not in p.__dict__:
        p._int8_static = _static_of(p)
    return p._int8_static


def _static_of(p: Problem):
    s, qp = p.act, p.act_qparams
    if qp is None or not isinstance(p.x, Tensor) or qp.scale.numel() != 1 \
            or s.rounding is not Rounding.NEAREST_EVEN \
            or (qp.zero_point is not None and qp.zero_point.numel() != 1):
        return None
    z = 0 if qp.zero_point is None else int(qp.zero_point.item())
    return (float(qp.scale.item()), z, int(s.format.min), int(s.format.max),
            0 if s.format.signed else 128)


def _native_run(p: Problem, want_acc: bool) -> Tensor:
    mod = native_module()
    packed = p.w.form("cpu.a8w8", _pack)
    bias = None if p.bias is None or want_acc else p.bias.float()
    if _native_form(p) == "dynamic":
        x = p.x.float()
        if want_acc:
            return mod.a8w8_accumulators(x, packed, x_mul=p.x_mul)
        return mod.a8w8_linear(x, packed, bias, x_mul=p.x_mul)
    static = None if want_acc else _static_args(p)
    if static is not None:  # calibrated per-tensor scale: quantized inside the kernel
        scale, z, qmin, qmax, off = static
        return mod.a8w8_linear_static(p.x.float(), packed, scale, bias, zero_point=z,
                                      qmin=qmin, qmax=qmax, offset=off, x_mul=p.x_mul)
    p.apply_x_mul()  # given codes (or a scale per row): quantized by torch, from x * x_mul
    a, ca, sx = _activation(p)
    if want_acc:
        return mod.a8w8_accumulators(None, packed, codes=(a, sx, ca))
    return mod.a8w8_linear_codes(a, sx, packed, bias, zx=ca)


def a8w8_linear(p: Problem) -> Tensor:
    return _native_run(p, False)


def native_accumulators(p: Problem) -> Tensor:
    """The exact int32 accumulator [M, N] of the ``cpu.a8w8`` path (test hook)."""
    return _native_run(p, True)
