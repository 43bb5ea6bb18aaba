"""The functional core: choose_qparams, quantize, dequantize, fake_quantize.

All pure: the same input and scheme give the same QTensor. ``fake_quantize`` is
``dequantize(quantize(x))`` with a straight-through gradient, so QAT and PTQ agree exactly.

Plain (fp32-scale) schemes, with x divided by the scale in float32:

* integer, symmetric:  s = amax / qmax,  q = clamp(round(x / s), qmin, qmax)
* integer, asymmetric: s = (hi - lo) / (qmax - qmin) over a range that includes 0,
  z = clamp(qmin - round(lo / s), qmin, qmax),  q = clamp(round(x / s) + z, qmin, qmax)
* float elements (fp8, fp6, fp4): s = amax / max_elem, codes = fmt.encode(x / s)
* binary: s = mean |x| (the least-squares scale for sign(x)), codes = sign(x)

An all-zero block gets scale 1 (never 0 or NaN); a block so small that amax / qmax
underflows float32 gets the smallest normal float32 (its values round to 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import BinaryFormat, IntFormat, pack, round_to_integer
from . import fast as _fast
from . import mx
from .granularity import PerGroup, blocked_view, scale_shape
from .qtensor import QTensor
from .scheme import Scheme

__all__ = [
    "QParams",
    "choose_qparams",
    "dequantize",
    "expected_scale_shape",
    "fake_quantize",
    "qparams_from_range",
    "quantize",
]

_TINY = torch.finfo(torch.float32).tiny


@dataclass
class QParams:
    """Scale (float32) and zero point (int32, asymmetric only) per block, shaped like the
    tensor's shape divided by the block (``[N, K/128]`` for g128 weights)."""

    scale: torch.Tensor
    zero_point: torch.Tensor | None = None


def expected_scale_shape(shape, scheme: Scheme) -> tuple[int, ...]:
    return scale_shape(tuple(shape), scheme.granularity.block_shape(tuple(shape)))


def _check_input(x, scheme: Scheme, name: str = "x") -> torch.Tensor:
    """Type, dtype and emptiness checks; returns x as float32 (no copy if it already is).
    Finiteness is checked where it is cheap: on the block statistics (see _check_finite)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/float16/bfloat16); got "
                        f"{x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to quantize")
    return x.detach().float()


def _check_finite(x: torch.Tensor, stats: torch.Tensor | None, scheme: Scheme) -> None:
    """Raise if x holds NaN/Inf. ``stats`` (per-block max/min or amax of x) is non-finite
    exactly when x is, so the full pass over x only runs when qparams were given."""
    ok = bool(torch.isfinite(stats).all()) if stats is not None else bool(torch.isfinite(x).all())
    if not ok:
        nan = int(torch.isnan(x).sum())
        inf = int(torch.isinf(x).sum())
        raise ValueError(f"x holds {nan} NaN and {inf} Inf values, which {scheme} cannot "
                         "represent (MX schemes mark such blocks with a NaN scale); clean the "
                         "input or clamp it first")


def _pad(x: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    g = scheme.granularity
    if scheme.pad and isinstance(g, PerGroup) and x.dim() and x.shape[-1] % g.size:
        return torch.nn.functional.pad(x, (0, g.padded_last(x.shape[-1]) - x.shape[-1]))
    return x


def _safe_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    s = (amax / qmax).float()
    return torch.where(amax > 0, s.clamp(min=_TINY), torch.ones_like(s))


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme | str) -> QParams:
    """QParams from a per-block range [lo, hi] (e.g. an observer's), for plain schemes."""
    scheme = Scheme.parse(scheme)
    if scheme.is_block_scaled:
        raise ValueError(f"{scheme} computes its block scales from the data; ranges do not "
                         "apply")
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("qparams_from_range: lo and hi must be finite")
    if (lo > hi).any():
        raise ValueError("qparams_from_range: lo must be <= hi")
    fmt = scheme.format
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the range always holds 0 exactly
    if not scheme.symmetric:
        scale = _safe_scale(hi - lo, fmt.max - fmt.min)
        zp = (fmt.min - torch.round(lo / scale)).clamp(fmt.min, fmt.max)
        return QParams(scale, zp.to(torch.int32))
    return QParams(_safe_scale(torch.maximum(-lo, hi), fmt.max))


def choose_qparams(x: torch.Tensor, scheme: Scheme | str) -> QParams:
    """Min-max qparams of ``x`` for a plain scheme (one scale per granularity block)."""
    scheme = Scheme.parse(scheme)
    x = _pad(_check_input(x, scheme), scheme)
    block = scheme.granularity.block_shape(tuple(x.shape))
    xb = blocked_view(x, block)
    dims = tuple(range(1, xb.dim(), 2))
    if isinstance(scheme.format, BinaryFormat):  # a zero block decodes to +-tiny, not +-1
        mean = xb.abs().mean(dims)
        _check_finite(x, mean, scheme)
        return QParams(mean.float().clamp(min=_TINY))
    if scheme.symmetric:
        amax = xb.abs().amax(dims)
        _check_finite(x, amax, scheme)
        return QParams(_safe_scale(amax, scheme.format.max))
    lo, hi = xb.amin(dims), xb.amax(dims)
    _check_finite(x, torch.cat([lo.flatten(), hi.flatten()]), scheme)
    return qparams_from_range(lo, hi, scheme)


def _broadcast(t: torch.Tensor, block=None) -> torch.Tensor:
    """[n0, n1, ...] -> [n0, 1, n1, 1, ...] to broadcast over ``blocked_view``."""
    return t.reshape([d for n in t.shape for d in (n, 1)]) if t.dim() else t


def quantize(x: torch.Tensor, scheme: Scheme | str, qparams: QParams | None = None) -> QTensor:
    """Quantize ``x`` to a QTensor; qparams are chosen from ``x`` (min-max) unless given.

    >>> q = quantize(torch.tensor([[0.5, -1.0, 2.0, 4.0]]), "int8")
    >>> q.scale, q.int_values()       # scale 4/127; 2.0 -> 63.5 -> 64 (tie to even)
    (tensor([[0.0315]]), tensor([[ 16, -32,  64, 127]], dtype=torch.int8))
    """
    scheme = Scheme.parse(scheme)
    x = _check_input(x, scheme)
    fast = _fast.quantize(x, scheme, qparams)
    if fast is not None:
        return fast
    shape = x.shape
    x = _pad(x, scheme)
    block = scheme.granularity.block_shape(tuple(x.shape))
    fmt = scheme.format
    if scheme.is_block_scaled:
        if scheme.scale_format.name == "e8m0":
            if qparams is not None:
                raise ValueError(f"{scheme}: MX scales are computed from the data; qparams "
                                 "cannot be given")
            codes, scale, micro = mx.mx_encode(x, scheme)
            return QTensor(_pack(codes, fmt), scale, scheme, shape, micro_exponent=micro)
        _check_finite(x, None, scheme)
        ts = None if qparams is None else qparams.scale
        codes, scale, ts = mx.nvfp4_encode(x, scheme, ts)
        return QTensor(_pack(codes, fmt), scale, scheme, shape, tensor_scale=ts)
    if qparams is None:
        qp = choose_qparams(x, scheme)
    else:
        _check_finite(x, None, scheme)
        qp = qparams
    sshape = scale_shape(tuple(x.shape), block)
    if tuple(qp.scale.shape) != sshape and qp.scale.numel() == 1 and all(s == 1 for s in sshape):
        qp = QParams(qp.scale.reshape(sshape), None if qp.zero_point is None
                     else qp.zero_point.reshape(sshape))
    if tuple(qp.scale.shape) != sshape:
        raise ValueError(f"qparams.scale must have shape {sshape} for {scheme} on x of shape "
                         f"{tuple(x.shape)}; got {tuple(qp.scale.shape)}")
    if (qp.zero_point is None) != scheme.symmetric:
        raise ValueError(f"qparams.zero_point must be {'None' if scheme.symmetric else 'given'} "
                         f"for {scheme}")
    xb = blocked_view(x, block)
    y = xb / _broadcast(qp.scale.float(), block)
    if qp.zero_point is None:
        codes = fmt.encode(y, scheme.rounding, saturate=True)
    else:
        r = round_to_integer(y, scheme.rounding) + _broadcast(qp.zero_point.float(), block)
        q = r.clamp_(fmt.min, fmt.max).to(torch.int16)
        codes = (q & ((1 << fmt.bits) - 1)).to(torch.uint8)
    zp = None if qp.zero_point is None else qp.zero_point.to(torch.int32)
    return QTensor(_pack(codes.reshape(x.shape), fmt), qp.scale.float().contiguous(), scheme,
                   shape, zero_point=zp)


def _pack(codes: torch.Tensor, fmt) -> torch.Tensor:
    return codes.contiguous() if fmt.bits >= 8 else pack(codes, fmt.bits)


def dequantize(q: QTensor) -> torch.Tensor:
    """QTensor -> float32 tensor of the logical shape."""
    fast = _fast.dequantize(q)
    if fast is not None:
        return fast
    s, fmt = q.scheme, q.scheme.format
    codes = q.unpacked_codes()
    if s.scale_format.name == "e8m0":
        out = mx.mx_decode(codes, q.scale, q.micro_exponent, s)
    elif s.scale_format.name == "fp8_e4m3fn":
        out = mx.nvfp4_decode(codes, q.scale, q.tensor_scale, s)
    else:
        block = s.granularity.block_shape(tuple(codes.shape))
        if fmt.bits == 8 and isinstance(fmt, IntFormat) and fmt.signed:
            vals = codes.view(torch.int8).float()
        else:
            vals = fmt.decode(codes)
        vb = blocked_view(vals, block)
        if q.zero_point is not None:
            vb = vb - _broadcast(q.zero_point.float(), block)
        out = (vb * _broadcast(q.scale, block)).reshape(codes.shape)
    if out.shape != q.shape:
        out = out[..., : q.shape[-1]]
    return out


class _FakeQuantize(torch.autograd.Function):
    """Forward: dequantize(quantize(x)). Backward: the gradient passes where x lies inside
    the clipping range and is zero outside (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, scheme, qparams):
        q = quantize(x, scheme, qparams)
        y = dequantize(q)
        ctx.save_for_backward(_inside(x.detach().float(), q))
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def _inside(x: torch.Tensor, q: QTensor) -> torch.Tensor:
    s, fmt = q.scheme, q.scheme.format
    if s.is_block_scaled:  # elements beyond max_elem * block scale were clamped
        xp = _pad(x, s)
        lim = mx.element_max(fmt) * mx.multiplier(q.scale, q.micro_exponent, q.tensor_scale, s)
        return (xp.abs() <= lim)[..., : x.shape[-1]].to(x.dtype)
    xp = _pad(x, s)
    block = s.granularity.block_shape(tuple(xp.shape))
    sc = _broadcast(q.scale, block)
    z = 0.0 if q.zero_point is None else _broadcast(q.zero_point.float(), block)
    xb = blocked_view(xp, block)
    lo, hi = (fmt.min - z) * sc, (fmt.max - z) * sc
    return ((xb >= lo) & (xb <= hi)).reshape(xp.shape)[..., : x.shape[-1]].to(x.dtype)


def fake_quantize(x: torch.Tensor, scheme: Scheme | str, qparams: QParams | None = None):
    """``dequantize(quantize(x))``, differentiable with a straight-through gradient.

    Returns a tensor of x's dtype; equal to the real quantize-dequantize path exactly.
    """
    return _FakeQuantize.apply(x, Scheme.parse(scheme), qparams)
