"""Compile the native C kernels on first use and load them with ctypes.

The build is plain C over raw buffers (no torch headers, no Python extension API), so
it needs only a C compiler at run time and nothing at install time.

* Compiler: ``$CC`` (may carry flags, e.g. ``CC="gcc-12 -g"``) or ``cc``.
* Cache: ``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit/native`` (if not writable:
  ``$TMPDIR/lowbit-native-<uid>``), one sub-folder per sha256 of (sources, flags,
  compiler argv and ``--version``, machine). The shared
  object is compiled to a temporary name in that folder and ``os.replace``-d into
  place, so concurrent first uses (pytest-xdist workers) never load half a file.
* ``LOWBIT_NATIVE=0`` disables the native path entirely (the pure-torch reference runs).
* ``LOWBIT_SPIN_US``: microseconds an idle worker thread spins before it sleeps (50).
* Any failure (no compiler, compile error, load error) logs one warning on
  ``logging.getLogger("lowbit.kernels")`` and returns ``None``: callers fall back.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("lowbit.kernels")

ISA_NAMES = ("scalar", "avx2", "avx512_vnni")  # index = level reported by the C code
_SOURCES = ("common.c", "a8w4.c", "a8w8.c")
_HEADERS = ("common.h",)  # hashed into the cache key, not compiled
_FLAGS = (
    "-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden",
    # Bit-exactness: no fused multiply-add contraction of t + acc * s.
    "-ffp-contract=off",
)
_LIB_NAME = "liblowbit_native.so"

_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler() -> list[str] | None:
    argv = shlex.split(os.environ.get("CC") or "cc")
    if not argv or shutil.which(argv[0]) is None:
        return None
    return argv


def cache_dir() -> Path:
    """Root folder of compiled kernels (``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit/native``)."""
    env = os.environ.get("LOWBIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lowbit" / "native"


def _build() -> Path | None:
    cc = _compiler()
    if cc is None:
        log.warning("lowbit native kernels: no C compiler (CC=%r); using the torch reference",
                    os.environ.get("CC") or "cc")
        return None
    here = Path(__file__).parent
    sources = [here / s for s in _SOURCES]
    try:
        version = subprocess.run([*cc, "--version"], check=False, capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("lowbit native kernels: compiler %r unusable (%s)", cc, exc)
        return None
    h = hashlib.sha256()
    for part in (*cc, version, platform.machine(), *_FLAGS):
        h.update(part.encode() + b"\0")
    try:
        for src in (*sources, *(here / s for s in _HEADERS)):
            h.update(src.read_bytes())
    except OSError as exc:  # e.g. a package built without the .c/.h files
        log.warning("lowbit native kernels: source missing (%s); using the torch reference", exc)
        return None
    key = h.hexdigest()[:20]
    # the cache, else a per-user temporary folder (read-only home, sandboxed CI)
    roots = [cache_dir(), Path(tempfile.gettempdir()) / f"lowbit-native-{os.getuid()}"]
    for root in roots:
        if (root / key / _LIB_NAME).exists():
            return root / key / _LIB_NAME
    for root in roots:
        out = root / key / _LIB_NAME
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".build-", suffix=".so")
            os.close(fd)
            break
        except OSError as exc:
            log.info("lowbit native kernels: folder %s not writable (%s)", out.parent, exc)
    else:
        return None
    cmd = [*cc, *_FLAGS, "-o", tmp, *map(str, sources)]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            log.warning("lowbit native kernels: compile failed (%s):\n%s",
                        shlex.join(cmd), proc.stderr[-4000:])
            return None
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("lowbit native kernels: compile failed (%s)", exc)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("lowbit native kernels: compiled %s", out)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.lowbit_a8w4_cpu_level.argtypes = []
    lib.lowbit_a8w4_cpu_level.restype = i32
    lib.lowbit_a8w4_set_spin_us.argtypes = [i32]
    lib.lowbit_a8w4_set_spin_us.restype = None
    lib.lowbit_a8w4_linear.argtypes = [p, i64, i32, i32, p, p, p, i32, i32, i32, i32, p, p,
                                       p, i32, i32]
    lib.lowbit_a8w4_linear.restype = i32
    lib.lowbit_a8w8_linear.argtypes = [p, p, p, p, i64, i32, i32, p, p, p, i32, p, p, p, i32,
                                       i32]
    lib.lowbit_a8w8_linear.restype = i32


def library() -> ctypes.CDLL | None:
    """The loaded native library, building it on first call; ``None`` when unavailable."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None
        if os.environ.get("LOWBIT_NATIVE", "1").strip().lower() in ("0", "false", "off", "no"):
            log.info("lowbit native kernels: disabled by LOWBIT_NATIVE; using the torch reference")
        else:
            path = _build()
            if path is not None:
                try:
                    lib = ctypes.CDLL(str(path))
                    _declare(lib)
                    spin = os.environ.get("LOWBIT_SPIN_US")
                    if spin:  # how long idle workers spin before sleeping (default 50 us)
                        lib.lowbit_a8w4_set_spin_us(int(spin))
                except (OSError, ValueError) as exc:
                    log.warning("lowbit native kernels: cannot load %s (%s)", path, exc)
                    lib = None
        _state["lib"] = lib
        return lib
