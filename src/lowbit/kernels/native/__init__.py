"""Native CPU A8W4 GEMM: int8 per-token activations x packed int4 weights.

``y = x @ W.T (+ bias)`` for fp32 x [M, K] and an int4 weight W [N, K] (symmetric, or
asymmetric with an integer zero point per group; groups of g in {32, 64, 128, ...} or
per channel), with the activation quantization fused in. The contract, which the native
kernel and :func:`reference_a8w4_linear` both follow bit for bit:

    s_x[m]  = amax|x[m, :]| / 127            (1 if that is 0: all-zero row, or underflow)
    qx      = clamp(round_half_even(x / s_x), -127, 127)          (x divided, not x * 1/s)
    acc_g   = sum_{k in g} qx[m, k] * (w[n, k] - z[n, g])         int32, exact
    t       = 0; for g = 0..G-1 in order: t = t + float(acc_g) * s_w[n, g]   (fp32, no FMA)
    y       = t * s_x[m]  then  + bias[n]

Paths, chosen at run time from the CPU (``isa()`` says which; logged on
``logging.getLogger("lowbit.kernels")``): ``avx512_vnni`` (vpdpbusd), ``avx2``
(vpmaddubsw + vpmaddwd), ``scalar`` (portable C), and ``reference`` (pure torch) when no
C compiler is usable or ``LOWBIT_NATIVE=0``. ``LOWBIT_NATIVE_ISA`` caps the native path
(e.g. ``avx2``); ``LOWBIT_NUM_THREADS`` sets the thread count (default: all usable cores;
work is split over output-column panels x row chunks); ``LOWBIT_SPIN_US`` how long idle
workers spin before sleeping (300 us). Non-finite inputs give unspecified results; the
output carries no autograd history.

Example (one row, one output, g = K = 2): x = [127, 2.5] -> s_x = 1, qx = [127, 2] (2.5
ties to even); w = [3, -1] with s_w = 0.5 -> acc = 381 - 2 = 379, t = 189.5, y = 189.5.

Usage::

    pw = pack_a8w4(packed_u8, scales, zeros=None, group_size=128)   # once, at load
    y = a8w4_linear(x, pw, bias)

The weight layout is described in :mod:`lowbit.kernels.native._layout`. The A8W8 kernel
(int8 x int8 per channel, same pool and ISA detection) is :mod:`.a8w8`.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from . import _build
from ._layout import PackedA8W4, pack_a8w4, unpack_a8w4
from ._reference import (
    quantize_activations,
    reference_a8w4_accumulators,
    reference_a8w4_linear,
)
from .a8w8 import (
    PackedA8W8,
    a8w8_accumulators,
    a8w8_isa,
    a8w8_linear,
    a8w8_linear_codes,
    a8w8_linear_static,
    check_x_mul,
    pack_a8w8,
    reference_a8w8_linear,
    unpack_a8w8,
)

__all__ = [
    "PackedA8W4",
    "PackedA8W8",
    "a8w4_accumulators",
    "a8w4_linear",
    "a8w8_accumulators",
    "a8w8_isa",
    "a8w8_linear",
    "a8w8_linear_codes",
    "a8w8_linear_static",
    "available",
    "get_num_threads",
    "isa",
    "pack_a8w4",
    "pack_a8w8",
    "quantize_activations",
    "reference_a8w4_accumulators",
    "reference_a8w4_linear",
    "reference_a8w8_linear",
    "set_num_threads",
    "supported_isas",
    "unpack_a8w4",
    "unpack_a8w8",
]

log = logging.getLogger("lowbit.kernels")
_ISAS = _build.ISA_NAMES
_config: dict[str, object] = {}


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads the native kernel uses (``LOWBIT_NUM_THREADS`` or every usable core)."""
    if "threads" not in _config:
        env = os.environ.get("LOWBIT_NUM_THREADS")
        _config["threads"] = max(1, int(env)) if env else _usable_cores()
    return _config["threads"]  # type: ignore[return-value]


def set_num_threads(n: int) -> None:
    """Set the native kernel's thread count (work is split over output columns)."""
    if int(n) < 1:
        raise ValueError(f"num_threads: must be >= 1, got {n}")
    _config["threads"] = int(n)


def _cpu_level() -> int:
    """Best native level this CPU and build allow: 2, 1, 0, or -1 (reference only)."""
    if "level" not in _config:
        lib = _build.library()
        level = -1 if lib is None else int(lib.lowbit_a8w4_cpu_level())
        cap = os.environ.get("LOWBIT_NATIVE_ISA", "").strip().lower()
        if cap and cap != "auto":
            if cap not in (*_ISAS, "reference"):
                raise ValueError(f"LOWBIT_NATIVE_ISA={cap!r}: expected one of "
                                 f"{', '.join((*_ISAS, 'reference'))}")
            level = min(level, _ISAS.index(cap) if cap in _ISAS else -1)
        _config["level"] = level
        name = _ISAS[level] if level >= 0 else "reference"
        log.info("lowbit a8w4 kernel: %s path, %d threads", name, get_num_threads())
    return _config["level"]  # type: ignore[return-value]


def available() -> bool:
    """True when a compiled native path (not the torch reference) runs."""
    return _cpu_level() >= 0


def isa() -> str:
    """The path :func:`a8w4_linear` runs: "avx512_vnni", "avx2", "scalar" or "reference"."""
    level = _cpu_level()
    return _ISAS[level] if level >= 0 else "reference"


def supported_isas() -> list[str]:
    """Every path that can run here, best first, "reference" last (for tests)."""
    return [_ISAS[i] for i in range(_cpu_level(), -1, -1)] + ["reference"]


def _resolve(name: str | None) -> int:
    if name is None:
        return _cpu_level()
    if name == "reference":
        return -1
    if name not in _ISAS:
        raise ValueError(f"isa: expected one of {supported_isas()}, got {name!r}")
    if _ISAS.index(name) > _cpu_level():
        raise ValueError(f"isa: {name!r} is not available here (have {supported_isas()})")
    return _ISAS.index(name)


def _check_inputs(x: Tensor, pw: PackedA8W4, bias: Tensor | None) -> Tensor:
    """Validate, and return x as a contiguous [M, K] view (or copy). Kept cheap: it runs on
    every call, and at M = 1 a call is ~100 us."""
    if type(pw) is not PackedA8W4:
        raise TypeError(f"weight: expected PackedA8W4 from pack_a8w4, got {type(pw).__name__}")
    if not isinstance(x, Tensor) or x.dtype is not torch.float32:
        raise TypeError(f"x: expected a torch.float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if not x.is_cpu:
        raise ValueError(f"x: expected a CPU tensor, got device {x.device}")
    k = pw.in_features
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: last dimension must be in_features K={k}, got {list(x.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dtype is not torch.float32:
            raise TypeError(f"bias: expected torch.float32, got {getattr(bias, 'dtype', type(bias))}")
        if bias.dim() != 1 or bias.shape[0] != pw.out_features:
            raise ValueError(f"bias: expected shape [{pw.out_features}], got {list(bias.shape)}")
        if not bias.is_cpu:
            raise ValueError(f"bias: expected a CPU tensor, got device {bias.device}")
    if x.dim() == 2 and x.is_contiguous():
        return x
    return x.reshape(-1, k).contiguous()


def _native(x2: Tensor, pw: PackedA8W4, bias: Tensor | None, level: int,
            acc: Tensor | None, x_mul: Tensor | None = None) -> Tensor:
    m, n = x2.shape[0], pw.out_features
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    k, kp, w, sw, zw, groups, opg, zconst = pw.kernel_args
    rc = _build.library().lowbit_a8w4_linear(
        x2.data_ptr(), None if x_mul is None else x_mul.data_ptr(), m, k, kp, w, sw, zw, n,
        groups, opg, zconst,
        None if bias is None else bias.data_ptr(), y.data_ptr(),
        None if acc is None else acc.data_ptr(), level, _config.get("threads") or get_num_threads())
    if rc == -1:
        raise MemoryError("a8w4_linear: native kernel could not allocate its work buffers")
    if rc != 0:
        raise RuntimeError(f"a8w4_linear: native kernel rejected its arguments (code {rc})")
    return y


def a8w4_linear(x: Tensor, weight: PackedA8W4, bias: Tensor | None = None, *,
                isa: str | None = None, x_mul: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) with int8 dynamic per-row activations and int4 weights.

    Args:
        x: fp32 [..., K] on the CPU (made contiguous if needed).
        weight: a :class:`PackedA8W4` from :func:`pack_a8w4`.
        bias: None or fp32 [N].
        isa: force a path ("avx512_vnni", "avx2", "scalar", "reference"); default: best.
        x_mul: None or fp32 [K] (e.g. SmoothQuant's 1 / s): multiplies x's columns first,
            fused into the quantization; the result is that of ``a8w4_linear(x * x_mul)``.

    Returns:
        fp32 [..., N], bit-identical across paths and to :func:`reference_a8w4_linear`.
    """
    x2 = _check_inputs(x, weight, bias)
    x_mul = check_x_mul(x_mul, weight.in_features)
    level = _resolve(isa) if isa is not None else _config.get("level", None)
    if level is None:
        level = _cpu_level()
    if level < 0:
        packed, scales, zeros = unpack_a8w4(weight)
        y = reference_a8w4_linear(x2 if x_mul is None else x2 * x_mul, packed, scales, zeros,
                                  group_size=weight.group_size, bias=bias)
    else:
        y = _native(x2, weight, bias, level, None, x_mul)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.out_features)


def a8w4_accumulators(x: Tensor, weight: PackedA8W4, *, isa: str | None = None,
                      x_mul: Tensor | None = None) -> Tensor:
    """Test hook: the exact int32 group sums acc[m, n, g] the kernel computes.

    Args:
        x: fp32 [..., K].  weight: PackedA8W4.  isa, x_mul: as in :func:`a8w4_linear`.

    Returns:
        int32 [M, N, G], M the product of x's leading dimensions.
    """
    x2 = _check_inputs(x, weight, None)
    x_mul = check_x_mul(x_mul, weight.in_features)
    level = _resolve(isa)
    if level < 0:
        packed, scales, zeros = unpack_a8w4(weight)
        return reference_a8w4_accumulators(x2 if x_mul is None else x2 * x_mul, packed, scales,
                                           zeros, group_size=weight.group_size)
    acc = torch.empty(x2.shape[0], weight.out_features, weight.num_groups, dtype=torch.int32)
    _native(x2, weight, None, level, acc, x_mul)
    return acc
