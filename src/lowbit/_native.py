"""Build C sources on first use and load them with ctypes: one generic loader for every
native library in the package.

The C code is plain C over raw buffers (no torch headers, no Python extension API), so it
needs only a C compiler at run time and nothing at install time.

* Compiler: ``$CC`` (may carry flags, e.g. ``CC="gcc-12 -g"``) or ``cc``.
* Cache: ``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit/native`` (if not writable:
  ``$TMPDIR/lowbit-native-<uid>``), one sub-folder per sha256 of
  (library name, sources, flags, compiler argv and ``--version``, machine). The shared
  object is compiled to a temporary name in that folder and ``os.replace``-d into place,
  so concurrent first uses (pytest-xdist workers) never load half a file.
* ``LOWBIT_NATIVE=0`` disables every native library (callers run their torch reference).
* Any failure (no compiler, compile error, load error, a missing symbol in ``declare``)
  logs one warning on ``logging.getLogger("lowbit")`` and returns ``None``: callers fall
  back. The result, library or ``None``, is cached per name for the process.

Usage::

    def _declare(lib):                      # argtypes/restype of every exported symbol
        lib.my_kernel.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.my_kernel.restype = ctypes.c_int

    lib = load("my_kernels", [Path(__file__).with_name("my.c")], ("-O3",), _declare)
    if lib is None:
        ...  # the torch reference
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
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["BASE_FLAGS", "cache_dir", "enabled", "load", "num_threads"]

log = logging.getLogger("lowbit")

# Flags every library gets: position independent shared object, hidden symbols unless
# exported, and no fused multiply-add contraction (bit-exactness with torch's fp32 ops).
BASE_FLAGS = ("-std=gnu11", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden",
              "-ffp-contract=off")

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False when ``LOWBIT_NATIVE`` is 0/false/off/no."""
    return os.environ.get("LOWBIT_NATIVE", "1").strip().lower() not in ("0", "false", "off",
                                                                         "no")


def cache_dir() -> Path:
    """Root folder of compiled libraries (``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit/native``)."""
    env = os.environ.get("LOWBIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lowbit" / "native"


def num_threads() -> int:
    """Threads native kernels may use: ``LOWBIT_NUM_THREADS`` or every usable core."""
    env = os.environ.get("LOWBIT_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("LOWBIT_NUM_THREADS=%r is not an integer; using every core", env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _compiler() -> list[str] | None:
    argv = shlex.split(os.environ.get("CC") or "cc")
    if not argv or shutil.which(argv[0]) is None:
        return None
    return argv


def _build(name: str, sources: Sequence[Path], flags: Sequence[str],
           depends: Sequence[Path]) -> Path | None:
    cc = _compiler()
    if cc is None:
        log.warning("lowbit native %s: no C compiler (CC=%r); using the torch reference", name,
                    os.environ.get("CC") or "cc")
        return None
    try:
        version = subprocess.run([*cc, "--version"], check=False, capture_output=True,
                                 text=True, timeout=30).stdout
        h = hashlib.sha256()
        for part in (name, *cc, version, platform.machine(), *flags):
            h.update(part.encode() + b"\0")
        for src in (*sources, *depends):
            h.update(Path(src).read_bytes() + b"\0")
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("lowbit native %s: cannot hash sources or run the compiler %r (%s)", name,
                    cc, exc)
        return None
    key, lib_name = h.hexdigest()[:20], f"liblowbit_{name}.so"
    # the cache, else a per-user temporary folder (read-only home, sandboxed CI)
    roots = [cache_dir(), Path(tempfile.gettempdir()) / f"lowbit-native-{os.getuid()}"]
    for root in roots:
        if (root / key / lib_name).exists():
            return root / key / lib_name
    for root in roots:
        out = root / key / lib_name
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".build-", suffix=".so")
            os.close(fd)
            break
        except OSError as exc:
            log.info("lowbit native %s: folder %s not writable (%s)", name, out.parent, exc)
    else:
        log.warning("lowbit native %s: no writable cache folder; using the torch reference",
                    name)
        return None
    cmd = [*cc, *flags, "-o", tmp, *map(str, sources)]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            log.warning("lowbit native %s: compile failed (%s):\n%s", name, shlex.join(cmd),
                        proc.stderr[-4000:])
            return None
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("lowbit native %s: compile failed (%s)", name, exc)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("lowbit native %s: compiled %s", name, out)
    return out


def load(name: str, sources: Sequence[Path], flags: Sequence[str],
         declare: Callable[[ctypes.CDLL], None], *,
         depends: Sequence[Path] = ()) -> ctypes.CDLL | None:
    """The library ``name`` built from ``sources`` with ``BASE_FLAGS + flags``, loaded and
    declared; ``None`` when native code is disabled or unavailable (one warning logged).

    Args:
        name: a short identifier (``"quant"``); the result is cached per name, so the
            first call's sources/flags win for the process.
        sources: C files, compiled together into one shared object.
        flags: extra compiler flags (``("-O3",)``); part of the cache key.
        declare: sets ``argtypes``/``restype`` on the loaded library; an exception in it
            (e.g. a missing symbol) counts as a load failure.
        depends: files the sources include (headers): not compiled, but part of the
            cache key, so editing them rebuilds.
    """
    with _lock:
        if name in _libs:
            return _libs[name]
        lib = None
        if not enabled():
            log.info("lowbit native %s: disabled by LOWBIT_NATIVE; using the torch reference",
                     name)
        else:
            path = _build(name, [Path(s) for s in sources], (*BASE_FLAGS, *flags),
                          [Path(d) for d in depends])
            if path is not None:
                try:
                    lib = ctypes.CDLL(str(path))
                    declare(lib)
                except (OSError, AttributeError, TypeError, ValueError) as exc:
                    log.warning("lowbit native %s: cannot load %s (%s)", name, path, exc)
                    lib = None
        _libs[name] = lib
        return lib
