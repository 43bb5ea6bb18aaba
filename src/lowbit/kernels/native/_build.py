"""The kernels' native library (common.c, a8w4.c, a8w8.c), built and loaded on first use by
``lowbit._native`` (compiler, cache, ``LOWBIT_NATIVE=0``, fallback: see there).

* ``LOWBIT_SPIN_US``: microseconds an idle worker thread spins before it sleeps (300).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ... import _native

ISA_NAMES = ("scalar", "avx2", "avx512_vnni")  # index = level reported by the C code
_HERE = Path(__file__).parent
_SOURCES = [_HERE / s for s in ("common.c", "a8w4.c", "a8w8.c")]
_HEADERS = [_HERE / "common.h"]  # hashed into the cache key, not compiled
_FLAGS = ("-O3",)


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.lowbit_a8w4_cpu_level.argtypes = []
    lib.lowbit_a8w4_cpu_level.restype = i32
    lib.lowbit_a8w4_set_spin_us.argtypes = [i32]
    lib.lowbit_a8w4_set_spin_us.restype = None
    lib.lowbit_a8w4_linear.argtypes = [p, p, i64, i32, i32, p, p, p, i32, i32, i32, i32, p,
                                       p, p, i32, i32]
    lib.lowbit_a8w4_linear.restype = i32
    lib.lowbit_a8w8_linear.argtypes = [p, p, p, p, p, p, i64, i32, i32, p, p, p, i32, p, p,
                                       p, i32, i32]
    lib.lowbit_a8w8_linear.restype = i32
    spin = os.environ.get("LOWBIT_SPIN_US")
    if spin:  # how long idle workers spin before sleeping (default 300 us)
        lib.lowbit_a8w4_set_spin_us(int(spin))


def library() -> ctypes.CDLL | None:
    """The loaded kernels library, building it on first call; ``None`` when unavailable."""
    return _native.load("kernels", _SOURCES, _FLAGS, _declare, depends=_HEADERS)
