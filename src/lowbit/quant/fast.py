"""Fast paths for quantize/dequantize (native kernels), tried before the torch reference.

Each function returns None when no fast path applies, and the torch path in
``functional.py`` (the reference) runs instead. Every fast path is tested bit for bit
against that reference (``tests/test_quant_fast.py``).

Covered (quantize and dequantize), on contiguous CPU float32 input, nearest-even rounding:

* plain schemes (fp32 scales) whose blocks are contiguous runs of the flattened tensor:
  ``PerTensor``, ``PerChannel(0)``, ``PerToken``, ``PerGroup(g)``; integer formats
  (symmetric or asymmetric, signed or unsigned, 2..8 bits) and float formats of <= 8 bits
  (fp8_e4m3fn, fp8_e5m2, fp6, fp4); computed or given qparams;
* MX (e8m0 scales, FLOOR/CEIL/EVEN scale rules, no micro-exponents): mxfp8, mxfp6, mxfp4,
  mxint8;
* NVFP4 (e4m3 block scales under an fp32 tensor scale).

Falls back (returns None) for: other granularities (``PerChannel(1)``), padding, other
rounding modes, binary/narrow formats, RCEIL, MX9/6/4, sub-byte codes whose packing group
straddles a block or row, NaN/Inf input in plain schemes and NVFP4 (the reference then
raises its error), and whenever the native library is unavailable (``LOWBIT_NATIVE=0``,
no C compiler).

Per-row and per-group blocks (up to 16384 elements) are quantized in one pass: block
statistics, scale, codes. Per-tensor takes two passes: the amax, then the codes; its scale
comes from ``qparams_from_range``, the reference itself.
"""

from __future__ import annotations

import math

import torch

from .. import _native
from ..formats import FloatFormat, IntFormat, Rounding, packed_length
from . import mx
from . import native as nat
from .granularity import PerGroup, scale_shape
from .qtensor import QTensor
from .scheme import ScaleMode, Scheme

__all__ = ["dequantize", "quantize"]

_MX_MODES = {ScaleMode.FLOOR: 0, ScaleMode.CEIL: 1, ScaleMode.EVEN: 2}


def _ok_tensor(t) -> bool:
    return (isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.is_contiguous()
            and t.dim() >= 1 and t.numel() > 0)


def _run_length(shape: tuple[int, ...], block: tuple[int, ...]) -> int | None:
    """L when every block is a contiguous run of L elements in row-major order (block =
    (1, ..., 1, b_k, shape[k+1:]...)), else None."""
    k = next((i for i, b in enumerate(block) if b != 1), len(block) - 1)
    if any(block[i] != shape[i] for i in range(k + 1, len(shape))):
        return None
    return math.prod(block)


def _plain_layout(shape, scheme: Scheme) -> tuple[int, tuple[int, ...]] | None:
    """(L, scale shape) for a plain scheme on ``shape``, or None (not covered)."""
    g, fmt = scheme.granularity, scheme.format
    if isinstance(g, PerGroup) and shape[-1] % g.size:
        return None  # padding, or the reference's error
    try:
        block = g.block_shape(tuple(shape))
    except ValueError:
        return None
    L = _run_length(tuple(shape), block)
    pg = nat.pack_group(fmt.bits)
    if L is None or shape[-1] % pg or L % pg:
        return None
    return L, scale_shape(tuple(shape), block)


def _format_ok(fmt) -> bool:
    if isinstance(fmt, IntFormat):
        return fmt.bits <= 8 and not fmt.narrow
    return nat.supports_float(fmt)


def _codes_shape(shape, bits: int) -> tuple[int, ...]:
    return (*shape[:-1], packed_length(shape[-1], bits)) if bits < 8 else tuple(shape)


def quantize(x: torch.Tensor, scheme: Scheme, qparams) -> QTensor | None:
    """Native quantize of float32 ``x``, or None when not covered (see the module doc)."""
    if (not _ok_tensor(x) or x.dtype != torch.float32
            or scheme.rounding is not Rounding.NEAREST_EVEN):
        return None
    lib = nat.library()
    if lib is None:
        return None
    if scheme.scale_format.name == "e8m0":
        return None if qparams is not None else _quantize_mx(lib, x, scheme)
    if scheme.scale_format.name == "fp8_e4m3fn":
        return _quantize_nvfp4(lib, x, scheme, qparams)
    return _quantize_plain(lib, x, scheme, qparams)


def _quantize_plain(lib, x, scheme: Scheme, qparams) -> QTensor | None:
    from .functional import qparams_from_range  # functional imports this module

    fmt = scheme.format
    if not _format_ok(fmt):
        return None
    layout = _plain_layout(x.shape, scheme)
    if layout is None:
        return None
    L, sshape = layout
    n, nb, threads = x.numel(), x.numel() // L, _native.num_threads()
    ip, fp = nat.encoder(fmt)
    codes = torch.empty(_codes_shape(x.shape, fmt.bits), dtype=torch.uint8)
    sym = scheme.symmetric
    if qparams is None and L <= nat.S_MAX:  # one pass: stats, scale, codes per block
        scale = torch.empty(nb, dtype=torch.float32)
        zp = None if sym else torch.empty(nb, dtype=torch.int32)
        smax = fmt.max if sym else fmt.max - fmt.min
        if lib.lbq_quant_plain(x.data_ptr(), n, L, 1, ip.data_ptr(), fp.data_ptr(), smax,
                               scale.data_ptr(), nat.ptr(zp), codes.data_ptr(), threads):
            return None  # NaN/Inf: the reference raises its error
        return QTensor(codes, scale.reshape(sshape), scheme, x.shape,
                       zero_point=None if zp is None else zp.reshape(sshape))
    ppb = -(-L // nat.S_MAX) if L > nat.S_MAX else 1
    a = torch.empty(nb * ppb, dtype=torch.float32)
    b = torch.empty_like(a)
    if lib.lbq_stats(x.data_ptr(), n, L, int(not sym), a.data_ptr(), b.data_ptr(), threads):
        return None
    if qparams is None:
        if sym:
            amax = a.view(nb, ppb).amax(1).reshape(sshape)
            qp = qparams_from_range(-amax, amax, scheme)
        else:
            qp = qparams_from_range(a.view(nb, ppb).amin(1).reshape(sshape),
                                    b.view(nb, ppb).amax(1).reshape(sshape), scheme)
        scale = qp.scale.float().contiguous()
        zp = None if qp.zero_point is None else qp.zero_point.contiguous()
    else:
        given = _given_qparams(qparams, sshape, scheme)
        if given is None:
            return None
        scale, zp = given
    if lib.lbq_quant_plain(x.data_ptr(), n, L, 0, ip.data_ptr(), fp.data_ptr(), 0.0,
                           scale.data_ptr(), nat.ptr(zp), codes.data_ptr(), threads):
        return None
    return QTensor(codes, scale, scheme, x.shape, zero_point=zp)


def _given_qparams(qp, sshape, scheme: Scheme):
    """(scale fp32 [sshape], zero point int32 or None) from caller qparams, or None when the
    reference should handle them (its errors, or values the fast path does not take)."""
    scale, zp = getattr(qp, "scale", None), getattr(qp, "zero_point", None)
    if not isinstance(scale, torch.Tensor) or (zp is None) != scheme.symmetric:
        return None
    if tuple(scale.shape) != sshape and scale.numel() == 1 and all(s == 1 for s in sshape):
        scale = scale.reshape(sshape)
        zp = None if zp is None else zp.reshape(sshape)
    if tuple(scale.shape) != sshape:
        return None
    scale = scale.float().contiguous()
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        return None
    if zp is not None:
        if (not isinstance(zp, torch.Tensor) or zp.is_floating_point()
                or tuple(zp.shape) != sshape or bool((zp.abs() > 2**24).any())):
            return None
        zp = zp.to(torch.int32).contiguous()
    return scale, zp


def _quantize_mx(lib, x, scheme: Scheme) -> QTensor | None:
    fmt, bs = scheme.format, scheme.granularity.size
    mx_int = isinstance(fmt, IntFormat)
    if (scheme.micro_block or scheme.scale_mode not in _MX_MODES or x.shape[-1] % bs
            or bs > nat.S_MAX or not (nat.supports_float(fmt) or (mx_int and fmt.signed
                                                                  and not fmt.narrow))
            or bs % nat.pack_group(fmt.bits)):
        return None
    mbits = fmt.mantissa_bits if isinstance(fmt, FloatFormat) else fmt.bits - 2
    ip, fp = nat.encoder(fmt, mx_int)
    codes = torch.empty(_codes_shape(x.shape, fmt.bits), dtype=torch.uint8)
    scale = torch.empty(*x.shape[:-1], x.shape[-1] // bs, dtype=torch.uint8)
    lib.lbq_quant_mx(x.data_ptr(), x.numel(), bs, ip.data_ptr(), fp.data_ptr(),
                     mx.element_emax(fmt), _MX_MODES[scheme.scale_mode], mbits,
                     codes.data_ptr(), scale.data_ptr(), _native.num_threads())
    return QTensor(codes, scale, scheme, x.shape)


def _quantize_nvfp4(lib, x, scheme: Scheme, qparams) -> QTensor | None:
    fmt, bs = scheme.format, scheme.granularity.size
    if (fmt.name != "fp4_e2m1" or x.shape[-1] % bs or bs > nat.S_MAX
            or bs % nat.pack_group(fmt.bits)):
        return None
    n, threads = x.numel(), _native.num_threads()
    parts = torch.empty(-(-n // nat.S_MAX), dtype=torch.float32)
    if lib.lbq_stats(x.data_ptr(), n, n, 0, parts.data_ptr(), None, threads):
        return None  # NaN/Inf: the reference raises
    if qparams is None:
        ts = mx.nvfp4_tensor_scale(parts.amax())
    else:
        given = getattr(qparams, "scale", None)
        if not isinstance(given, torch.Tensor) or given.numel() != 1:
            return None
        ts = given.float().reshape(())
    inv_ts = 1.0 / ts
    if not (0 < float(ts) < math.inf and 0 < float(inv_ts) < 2.0**120):
        return None  # extreme tensor scales: leave them to the reference
    ip, fp = nat.encoder(fmt)
    ip8, fp8 = nat.encoder(scheme.scale_format)
    codes = torch.empty(_codes_shape(x.shape, fmt.bits), dtype=torch.uint8)
    scale = torch.empty(*x.shape[:-1], x.shape[-1] // bs, dtype=torch.uint8)
    if lib.lbq_quant_nvfp4(x.data_ptr(), n, bs, ip.data_ptr(), fp.data_ptr(), ip8.data_ptr(),
                           fp8.data_ptr(), float(ts), float(inv_ts), codes.data_ptr(),
                           scale.data_ptr(), threads):
        return None
    return QTensor(codes, scale, scheme, x.shape, tensor_scale=ts)


def dequantize(q: QTensor) -> torch.Tensor | None:
    """Native dequantize of a QTensor, or None when not covered (see the module doc)."""
    if not isinstance(q, QTensor) or not q.shape or q.padded_shape != q.shape:
        return None
    s, fmt = q.scheme, q.scheme.format
    shape = tuple(q.shape)
    if (not _ok_tensor(q.codes) or q.codes.dtype != torch.uint8
            or tuple(q.codes.shape) != _codes_shape(shape, fmt.bits)
            or not _ok_tensor(q.scale)):
        return None
    lib = nat.library()
    if lib is None:
        return None
    n, threads = math.prod(shape), _native.num_threads()
    out = torch.empty(shape, dtype=torch.float32)
    scale8 = lut = scale = zp = None
    ts = 0.0
    if s.is_block_scaled:
        L = s.granularity.size
        mx_int = isinstance(fmt, IntFormat)
        if (q.micro_exponent is not None or s.micro_block or shape[-1] % L
                or q.scale.dtype != torch.uint8
                or tuple(q.scale.shape) != (*shape[:-1], shape[-1] // L)
                or not (nat.supports_float(fmt) or (mx_int and not fmt.narrow))
                or L % nat.pack_group(fmt.bits)):
            return None
        scale8 = q.scale
        if s.scale_format.name == "e8m0":
            table, lut = nat.decode_table(fmt, mx_int), nat.scale_lut("e8m0")
        else:
            t = q.tensor_scale
            if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.dtype != torch.float32:
                return None
            ts = float(t)
            if not (math.isfinite(ts) and ts != 0.0):
                return None
            table, lut = nat.decode_table(fmt), nat.scale_lut("e4m3")
    else:
        if not _format_ok(fmt):
            return None
        layout = _plain_layout(shape, s)
        if layout is None or q.scale.dtype != torch.float32:
            return None
        L, sshape = layout
        if tuple(q.scale.shape) != sshape:
            return None
        scale = q.scale
        if q.zero_point is not None:
            zp = q.zero_point
            if (not isinstance(zp, torch.Tensor) or tuple(zp.shape) != sshape
                    or zp.is_floating_point() or bool((zp.abs() > 2**24).any())):
                return None
            zp = zp.to(torch.int32).contiguous()
        table = nat.decode_table(fmt)
    lib.lbq_dequant(q.codes.data_ptr(), n, L, fmt.bits, table.data_ptr(), table.numel(),
                    nat.ptr(scale), nat.ptr(zp), nat.ptr(scale8), nat.ptr(lut), ts,
                    out.data_ptr(), threads)
    return out
