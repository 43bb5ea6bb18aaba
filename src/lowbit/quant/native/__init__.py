"""ctypes binding of ``quantize.c``: the native quantize/dequantize kernels.

This module only loads the library and turns formats into the small parameter arrays the
C code reads; which scheme takes which kernel is decided in :mod:`lowbit.quant.fast`.

Element encoder parameters (``encoder(fmt)``), int32 ``[kind, bits, mbits, bias, maxmag]``
and float32 ``[qmin, qmax, maxval, min_normal, submul, post]``:

* integer (kind 0): ``code = clamp(rne(y) + zp, qmin, qmax) & (2^bits - 1)``;
* float (kind 1): round the fp32 mantissa of ``y`` to ``mbits`` (ties to even); below the
  smallest normal, ``rne(|y| * submul)`` with ``submul = 2^(mbits + bias - 1)`` (the
  subnormal quantum scaled to 1, exact); at or above ``maxval``, the code ``maxmag`` of the
  largest finite value (saturation). Example fp8_e4m3fn: 460.0 -> 448 (0x7E), 2^-10 -> 0.
* ``post`` multiplies after the division by the scale (MX integer elements: 2^(bits-2)).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ... import _native
from ...formats import FloatFormat, IntFormat

__all__ = [
    "S_MAX",
    "decode_table",
    "encoder",
    "library",
    "pack_group",
    "ptr",
    "scale_lut",
    "set_isa",
    "supports_float",
]

S_MAX = 16384  # elements per work piece (quantize.c); fused per-block kernels need L <= S_MAX

_HERE = Path(__file__).parent
_SOURCES = [_HERE / "quantize.c", _HERE / "quantize_avx512.c"]
_HEADERS = [_HERE / "kernels.h"]  # part of the cache key
_FLAGS = ("-O3", "-fno-math-errno")


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.lbq_isa.argtypes, lib.lbq_isa.restype = [i32], i32
    lib.lbq_stats.argtypes = [p, i64, i64, i32, p, p, i32]
    lib.lbq_quant_plain.argtypes = [p, i64, i64, i32, p, p, f32, p, p, p, i32]
    lib.lbq_quant_mx.argtypes = [p, i64, i64, p, p, i32, i32, i32, p, p, i32]
    lib.lbq_quant_nvfp4.argtypes = [p, i64, i64, p, p, p, p, f32, f32, p, p, i32]
    lib.lbq_dequant.argtypes = [p, i64, i64, i32, p, i32, p, p, p, p, f32, p, i32]
    for fn in (lib.lbq_stats, lib.lbq_quant_plain, lib.lbq_quant_mx, lib.lbq_quant_nvfp4,
               lib.lbq_dequant):
        fn.restype = i32


def library() -> ctypes.CDLL | None:
    """The loaded kernels (built on first use), or None: then the torch reference runs."""
    return _native.load("quant", _SOURCES, _FLAGS, _declare, depends=_HEADERS)


def set_isa(level: int) -> int:
    """Test hook: 0 forces the scalar C paths, 1 the AVX-512 ones where the CPU has them.
    Returns 1 when AVX-512 runs."""
    lib = library()
    return -1 if lib is None else int(lib.lbq_isa(int(level)))


def ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def pack_group(bits: int) -> int:
    """Codes per packing group (``lb.formats.pack``): 1 for 8 bits, 2 for 4, 4 for 2 and 6."""
    return {8: 1, 4: 2, 2: 4, 6: 4, 1: 8}.get(bits, 8)


def supports_float(fmt) -> bool:
    """Float element formats the C encoder handles: <= 8 bits, signed, with subnormals."""
    return (isinstance(fmt, FloatFormat) and fmt.bits <= 8 and fmt.signed and fmt.subnormals
            and fmt.mantissa_bits >= 1)


@functools.cache
def encoder(fmt, mx_int: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32[5], float32[6]) encoder parameters for ``fmt`` (see the module docstring).
    ``mx_int``: MX fixed-point integer elements (symmetric range, scaled by 2^(bits-2))."""
    if isinstance(fmt, IntFormat):
        lo, hi, post = (-fmt.max, fmt.max, 2.0 ** (fmt.bits - 2)) if mx_int else \
            (fmt.min, fmt.max, 1.0)
        ip = [0, fmt.bits, 0, 0, 0]
        fp = [lo, hi, 0.0, 0.0, 0.0, post]
    else:
        maxmag = int(fmt.encode(torch.tensor([fmt.max]))[0])
        ip = [1, fmt.bits, fmt.mantissa_bits, fmt.bias, maxmag]
        fp = [0.0, 0.0, fmt.max, fmt.min_normal, 2.0 ** (fmt.mantissa_bits + fmt.bias - 1), 1.0]
    return torch.tensor(ip, dtype=torch.int32), torch.tensor(fp, dtype=torch.float32)


@functools.cache
def decode_table(fmt, mx_int: bool = False) -> torch.Tensor:
    """float32 value of every code (at least 16 entries), as the reference decodes them."""
    t = fmt.table()
    if mx_int:
        t = t * 2.0 ** -(fmt.bits - 2)
    if t.numel() < 16:
        t = torch.cat([t, torch.zeros(16 - t.numel())])
    return t.contiguous()


@functools.cache
def scale_lut(kind: str) -> torch.Tensor:
    """Multiplier per scale code: ``e8m0`` (NaN for 0xFF, as mx.multiplier) or ``e4m3``."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    if kind == "e8m0":
        return torch.where(codes == 255, torch.nan,
                           torch.exp2(codes.to(torch.int32).float() - 127)).contiguous()
    return codes.view(torch.float8_e4m3fn).float().contiguous()
