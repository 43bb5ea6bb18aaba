"""Native CPU A8W8 GEMM: int8 per-token activations x int8 per-channel weights.

``y = x @ W.T (+ bias)`` for fp32 x [M, K] and a symmetric int8 weight W [N, K] with one
fp32 scale per output channel (or one per tensor), the activation quantization fused in.
The contract is lowbit's ``cpu.int8.int_mm`` / reference path, bit for bit::

    s_x[m] = amax|x[m, :]| / 127, at least FLT_MIN; 1 for an all-zero row
    qx     = round_half_even(x / s_x)       (x divided; |x / s_x| < 127.5, no clamp)
    acc    = sum_k qx[m, k] * w[n, k]                              int32, exact
    y      = ((float)acc * s_w[n]) * s_x[m]  then  + bias[n]       fp32, no FMA

That is ``lb.quantize(x, "int8:token")`` for the activations. Given int8 codes with a
scale per row (or one per tensor, static quantization) skip the first two lines
(:func:`a8w8_linear_codes`); they may carry an integer zero point z per row or tensor
(asymmetric; uint8 codes go in shifted to int8, ``c - 128`` with ``z - 128``): then
``acc = sum_k (qx[m, k] - z[m]) * w[n, k]``.

Example (one row, one output, K = 2): x = [127, 2.5] -> s_x = 1, qx = [127, 2] (2.5 ties
to even); w = [3, -1] with s_w = 0.5 -> acc = 379, y = 189.5.

Paths (:func:`a8w8_isa`): ``avx512_vnni`` (vpdpbusd on offset-binary weights, see a8w8.c),
``scalar`` (portable C; what an AVX2-only CPU runs), ``reference`` (pure torch, when
no native library: no compiler or ``LOWBIT_NATIVE=0``). ``LOWBIT_NATIVE_ISA`` and
``LOWBIT_NUM_THREADS`` work as for the A8W4 kernel.

Weight layout (:func:`pack_a8w8`, once per weight): N padded to blocks of 16 columns, K
to Kp (a multiple of 4), codes stored as ``u = w + 128`` (uint8), per block and quad of
4 k's 64 bytes, byte ``4*j + i`` = u[16b + j, 4o + i]; padding u = 128 (w = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _build
from ._layout import in_huge_pages

__all__ = ["MAX_K", "PackedA8W8", "a8w8_accumulators", "a8w8_isa", "a8w8_linear",
           "a8w8_linear_codes", "a8w8_linear_static", "pack_a8w8", "reference_a8w8_linear",
           "unpack_a8w8"]

_TINY = torch.finfo(torch.float32).tiny
_LEVELS = {"avx512_vnni": 2, "scalar": 0, "reference": -1}
# The true int32 accumulator must fit: K * 128 * 127 <= 2^31 - 1.
MAX_K = (2**31 - 1) // (128 * 127)


@dataclass(frozen=True)
class PackedA8W8:
    """An int8 weight [N, K] repacked for the native A8W8 kernel (see module docstring).

    Attributes:
        data: uint8 [NB, Kp/4, 64], offset-binary codes.  scales: fp32 [NB * 16] (0 in
        padded columns).  wsum: int32 [NB * 16], sum_k w[n, k] (for activation zero
        points).  out_features: N.  in_features: K.
    """

    data: Tensor
    scales: Tensor
    wsum: Tensor
    out_features: int
    in_features: int

    @property
    def padded_in_features(self) -> int:
        return self.data.shape[1] * 4

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes and scales, padding included."""
        return self.data.numel() + (self.scales.numel() + self.wsum.numel()) * 4


def pack_a8w8(codes: Tensor, scales: Tensor) -> PackedA8W8:
    """Repack int8 codes [N, K] with scales (fp32, N values or one) once, at load time.

    Raises:
        TypeError / ValueError naming the argument on a wrong dtype or shape, or when
        K > MAX_K (132,104: the int32 accumulator could overflow).
    """
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.dtype != torch.int8:
        raise TypeError(f"codes: expected an int8 tensor [N, K]; got "
                        f"{getattr(codes, 'dtype', type(codes).__name__)} "
                        f"{list(getattr(codes, 'shape', []))}")
    n, k = codes.shape
    if k < 1 or n < 1:
        raise ValueError(f"codes: N and K must be positive; got {[n, k]}")
    if k > MAX_K:
        raise ValueError(f"codes: K={k} exceeds {MAX_K}; the int32 accumulator could overflow")
    if not isinstance(scales, Tensor) or scales.numel() not in (1, n):
        raise ValueError(f"scales: expected {n} per-channel scales or one per-tensor scale; "
                         f"got {list(getattr(scales, 'shape', []))}")
    nb, kp = (n + 15) // 16, (k + 3) // 4 * 4
    u = torch.full((nb * 16, kp), 128, dtype=torch.uint8)
    u[:n, :k] = codes.view(torch.uint8) ^ 0x80
    data = u.view(nb, 16, kp // 4, 4).permute(0, 2, 1, 3).reshape(nb, kp // 4, 64).contiguous()
    sc = torch.zeros(nb * 16, dtype=torch.float32)
    sc[:n] = scales.float().reshape(-1).expand(n)
    ws = torch.zeros(nb * 16, dtype=torch.int32)
    ws[:n] = codes.sum(dim=1, dtype=torch.int32)
    return PackedA8W8(in_huge_pages(data), sc, ws, n, k)


def unpack_a8w8(pw: PackedA8W8) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`pack_a8w8`: (codes int8 [N, K], scales fp32 [N])."""
    nb, nq = pw.data.shape[0], pw.data.shape[1]
    u = pw.data.view(nb, nq, 16, 4).permute(0, 2, 1, 3).reshape(nb * 16, nq * 4)
    codes = (u[:pw.out_features, :pw.in_features] ^ 0x80).view(torch.int8).contiguous()
    return codes, pw.scales[:pw.out_features].clone()


def reference_a8w8_linear(x: Tensor, pw: PackedA8W8, bias: Tensor | None = None, *,
                          codes: tuple | None = None, want_acc: bool = False) -> Tensor:
    """The contract in torch (fp32 [M, N], or the int32 accumulators if ``want_acc``).
    ``codes=(qx int8 [M, K], sx fp32 [M], zx int32 [M] or None)`` replaces the
    quantization of ``x``."""
    if codes is None:
        amax = x.abs().amax(dim=1, keepdim=True)
        sx = torch.where(amax > 0, (amax / 127).clamp(min=_TINY), 1.0)
        qx = torch.round(x / sx)
    else:
        qx, sx = codes[0].to(torch.float64), codes[1].reshape(-1, 1)
        if codes[2] is not None:
            qx = qx - codes[2].to(torch.float64).reshape(-1, 1)
    w, sw = unpack_a8w8(pw)
    acc = (qx.double() @ w.double().T).to(torch.int32)  # exact: |sums| < 2^53
    if want_acc:
        return acc
    y = (acc.float() * sw) * sx
    return y if bias is None else y + bias


_PKG: list = []  # lowbit.kernels.native, imported on first use (it imports this module)


def _package():
    if not _PKG:
        from .. import native

        _PKG.append(native)
    return _PKG[0]


def a8w8_isa() -> str:
    """The best path here: "avx512_vnni", "scalar" or "reference"."""
    level = _package()._cpu_level()
    return "avx512_vnni" if level >= 2 else ("scalar" if level >= 0 else "reference")


def _level(isa: str | None) -> int:
    best = _LEVELS[a8w8_isa()]
    if isa is None:
        return best
    if isa not in _LEVELS:
        raise ValueError(f"isa: expected one of {list(_LEVELS)}, got {isa!r}")
    if _LEVELS[isa] > best:
        raise ValueError(f"isa: {isa!r} is not available here (best: {a8w8_isa()!r})")
    return _LEVELS[isa]


def _check(pw: PackedA8W8, bias: Tensor | None, k: int) -> None:
    if type(pw) is not PackedA8W8:
        raise TypeError(f"weight: expected PackedA8W8 from pack_a8w8, got {type(pw).__name__}")
    if k != pw.in_features:
        raise ValueError(f"x: last dimension must be in_features K={pw.in_features}, got {k}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.dtype != torch.float32
                             or tuple(bias.shape) != (pw.out_features,)):
        raise ValueError(f"bias: expected fp32 [{pw.out_features}]")


def check_x_mul(x_mul: Tensor | None, k: int) -> Tensor | None:
    """Validate a column multiplier of x (SmoothQuant's 1 / s): fp32 [K] on the CPU."""
    if x_mul is None:
        return None
    if not isinstance(x_mul, Tensor) or x_mul.dtype != torch.float32 or not x_mul.is_cpu \
            or tuple(x_mul.shape) != (k,):
        raise ValueError(f"x_mul: expected a CPU float32 tensor of shape [{k}], got "
                         f"{getattr(x_mul, 'dtype', type(x_mul).__name__)} "
                         f"{list(getattr(x_mul, 'shape', []))}")
    return x_mul.contiguous()


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _native(pw, x2, x_mul, codes, bias, level, want_acc, static=None):
    m, n = (x2 if x2 is not None else codes[0]).shape[0], pw.out_features
    y = torch.empty(m, n, dtype=torch.float32)
    acc = torch.empty(m, n, dtype=torch.int32) if want_acc else None
    if m == 0:
        return acc if want_acc else y
    if bias is not None:
        bias = bias.contiguous()
    qx, sx, zx = codes if codes is not None else (None, None, None)
    qspec = None
    if static is not None:  # x is quantized in the kernel with these (see a8w8_linear_static)
        sx, qspec, zx = static
    rc = _build.library().lowbit_a8w8_linear(
        _ptr(x2), _ptr(x_mul), _ptr(qx), _ptr(sx), _ptr(qspec), _ptr(zx), m, pw.in_features,
        pw.padded_in_features, pw.data.data_ptr(), pw.scales.data_ptr(), pw.wsum.data_ptr(), n,
        _ptr(bias), y.data_ptr(), _ptr(acc), level, _package().get_num_threads())
    if rc == -1:
        raise MemoryError("a8w8_linear: native kernel could not allocate its work buffers")
    if rc != 0:
        raise RuntimeError(f"a8w8_linear: native kernel rejected its arguments (code {rc})")
    return acc if want_acc else y


def _static_codes(x2, scale, z, qmin, qmax):
    """lb.quantize's static integer codes of x2 (the torch side of a8w8_linear_static)."""
    r = torch.round(x2 / scale) + z
    return r.clamp_(qmin, qmax)


def _run(x, pw, bias, isa, codes, want_acc, x_mul=None, static=None):
    level = _level(isa)
    if codes is None:
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() < 1:
            raise TypeError(f"x: expected a torch.float32 tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        _check(pw, bias, x.shape[-1])
        lead = x.shape[:-1]
        x2 = x if x.dim() == 2 and x.is_contiguous() else \
            x.reshape(-1, pw.in_features).contiguous()
        x_mul = check_x_mul(x_mul, pw.in_features)
    else:
        qx, sx, zx = codes
        if qx.dtype != torch.int8 or qx.dim() != 2:
            raise TypeError(f"qx: expected int8 codes [M, K], got {qx.dtype} {list(qx.shape)}")
        _check(pw, bias, qx.shape[1])
        m = qx.shape[0]
        if sx.numel() not in (1, m) or (zx is not None and zx.numel() not in (1, m)):
            raise ValueError(f"sx, zx: expected {m} values (one per row) or one")
        if zx is not None and (zx.dtype.is_floating_point or pw.in_features * 255 * 128
                               > 2**31 - 1):
            raise ValueError("zx: integer zero points, with K <= 65,793 (int32 bound)")
        lead, x2 = qx.shape[:1], None
        sx = sx.float().reshape(-1).expand(m).contiguous()
        if zx is not None:
            zx = zx.to(torch.int32).reshape(-1).expand(m).contiguous()
        codes = (qx.contiguous(), sx, zx)
    if static is not None:  # (scale, zero point, qmin, qmax, offset) -> kernel arguments
        scale, z, qmin, qmax, off = static
        if not (scale > 0 and math.isfinite(scale)) or not -128 <= qmin - off <= qmax - off <= 127:
            raise ValueError(f"static: scale must be finite and > 0 and the codes minus the "
                             f"offset within int8; got scale={scale}, range [{qmin}, {qmax}], "
                             f"offset {off}")
        if z != off and pw.in_features * 255 * 128 > 2**31 - 1:
            raise ValueError("zero_point: K <= 65,793 with a zero point (int32 bound)")
        m = x2.shape[0]
        static = (torch.full((m,), scale, dtype=torch.float32),
                  torch.tensor([z, qmin, qmax, off], dtype=torch.int32),
                  None if z == off else torch.full((m,), z - off, dtype=torch.int32))
    if level < 0:
        xs = x2 if x_mul is None or x2 is None else x2 * x_mul
        if static is not None:
            sx, (z, qmin, qmax, off), zx = static[0], static[1].tolist(), static[2]
            c = (_static_codes(xs, sx[0].item(), z, qmin, qmax) - off).to(torch.int8)
            xs, codes = None, (c, sx, zx)
        y = reference_a8w8_linear(xs, pw, bias, codes=codes, want_acc=want_acc)
    else:
        y = _native(pw, x2, x_mul, codes, bias, level, want_acc, static)
    return y if len(lead) == 1 else y.reshape(*lead, pw.out_features)


def a8w8_linear(x: Tensor, weight: PackedA8W8, bias: Tensor | None = None, *,
                isa: str | None = None, x_mul: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias), x fp32 [..., K] quantized per row on the fly -> fp32 [..., N].
    ``x_mul`` (fp32 [K], e.g. SmoothQuant's 1 / s) multiplies x's columns first, fused into
    the quantization: the result is that of ``a8w8_linear(x * x_mul, ...)``, bit for bit.
    ``isa`` forces a path ("avx512_vnni", "scalar", "reference"); all agree bit for bit."""
    return _run(x, weight, bias, isa, None, False, x_mul)


def a8w8_linear_static(x: Tensor, weight: PackedA8W8, scale: float, bias: Tensor | None = None,
                       *, zero_point: int = 0, qmin: int = -128, qmax: int = 127,
                       offset: int = 0, isa: str | None = None,
                       x_mul: Tensor | None = None) -> Tensor:
    """y for activations quantized here with a calibrated per-tensor scale (static int8):
    codes ``c = clamp(round_half_even(x' / scale) + zero_point, qmin, qmax)`` (x' = x *
    x_mul), exactly ``lb.quantize``'s static int8 / uint8 codes, fed to the GEMM as ``c -
    offset`` (128 for uint8). Saves the separate quantization pass of
    :func:`a8w8_linear_codes`; non-finite x give unspecified results here."""
    return _run(x, weight, bias, isa, None, False, x_mul,
                (float(scale), int(zero_point), int(qmin), int(qmax), int(offset)))


def a8w8_linear_codes(qx: Tensor, sx: Tensor, weight: PackedA8W8, bias: Tensor | None = None,
                      *, zx: Tensor | None = None, isa: str | None = None) -> Tensor:
    """y for given int8 activation codes qx [M, K], scales sx and zero points zx (None:
    symmetric), each one per row or one for all."""
    return _run(None, weight, bias, isa, (qx, sx, zx), False)


def a8w8_accumulators(x: Tensor, weight: PackedA8W8, *, isa: str | None = None,
                      codes: tuple | None = None, x_mul: Tensor | None = None) -> Tensor:
    """Test hook: the exact int32 accumulators acc [M, N] the kernel computes (from x, or
    from ``codes=(qx, sx, zx or None)``)."""
    return _run(x, weight, None, isa, codes, True, x_mul)
