"""The benchmark matrix: every scheme of the seed, on GEMM shapes and on a whole model.

Rows are named as in the seed (``MATRIX``: FP32, FP16, BF16, A8W8, A8W4, INT8 static, FP8,
MXFP8, MXFP4, MX6, NVFP4), each built from a recipe preset by the same
``lowbit.ptq.quantize_model`` users call, in this process, with the FP32 baseline timed
right before each row (ratios are against that adjacent baseline, so drift from other load
on the machine cancels to first order).

* ``bench_gemm(shapes)``: a single ``nn.Linear(K, N)`` quantized per row, run on x [M, K]:
  median time, GOP/s (2*M*K*N / time), output SQNR against fp32, bytes of the weight, the
  backend that ran and whether it is a real kernel or an emulated path.
* ``bench_model(model, latency_fn, metric)``: per row, model bytes, latency (median, batch 1
  and batch 32, from ``latency_fn(model, batch_size)``), throughput (32 / latency at 32),
  resident memory during those runs (RSS sampled every 2 ms: the process's peak, which
  includes the FP32 model kept for reference, and its growth over the RSS before the row;
  Linux only), the metric drop against FP32, and the kernels that ran.

Figures are wall-clock and noisy on shared machines: re-run on a quiet one to publish.
"""

from __future__ import annotations

import copy
import json
import statistics
import threading
import time
import warnings
from dataclasses import dataclass

import torch

from .runner import quantized_layers

__all__ = [
    "GEMM_SHAPES",
    "MATRIX",
    "BenchResult",
    "PeakRSS",
    "bench_gemm",
    "bench_model",
    "is_emulated",
    "time_call",
]

MATRIX: dict[str, str | None] = {
    "FP32": None, "FP16": "fp16", "BF16": "bf16", "A8W8": "a8w8", "A8W4": "a8w4",
    "INT8": "int8", "FP8": "fp8", "MXFP8": "mxfp8", "MXFP4": "mxfp4", "MX6": "mx6",
    "NVFP4": "nvfp4",
}
# (M, K, N): MiniLM's projections at batch 32 x 32 tokens, and a square one
GEMM_SHAPES = [(1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384), (256, 4096, 4096)]
_EMULATED = ("reference", "emulated")


def is_emulated(backend: str) -> bool:
    """True for the reference/emulated paths (exact but slow), False for real kernels."""
    return backend.split(" ")[0] in _EMULATED


def time_call(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Context manager: resident memory sampled every ``interval`` s by a thread.
    ``.peak``: the process's peak RSS (bytes) while inside; ``.growth``: that peak minus the
    RSS at entry. Both None where /proc is missing."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.growth = interval, None, None

    def __enter__(self):
        self.start = _rss()
        self._max = self.start
        self._stop = threading.Event()
        if self.start is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss() or 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self.start is not None:
            self._t.join()
            self._max = max(self._max, _rss() or 0)
            self.peak, self.growth = self._max, self._max - self.start
        return False


def _backends(model) -> str:
    names = set()
    for m in quantized_layers(model).values():
        try:
            names.add(str(m.backend))
        except Exception as e:  # noqa: BLE001 - report, do not die
            names.add(f"error: {type(e).__name__}")
    return ", ".join(sorted(names)) or "torch.fp32"


_NEUTRAL = ("gather+dequantize",)   # embedding lookups: no GEMM, neither real nor emulated


def _path(backends: str) -> str:
    """``real`` / ``emulated`` / ``mixed`` over the GEMM backends of a model."""
    parts = [b.strip() for b in backends.split(",") if b.strip() not in _NEUTRAL] or ["-"]
    if all(is_emulated(b) for b in parts):
        return "emulated"
    return "real" if not any(is_emulated(b) for b in parts) else "mixed"


@dataclass
class BenchResult:
    """Rows of one matrix (``kind`` is ``gemm`` or ``model``) and how they were made."""

    kind: str
    rows: list[dict]
    info: dict

    def to_json(self, path) -> None:
        from .render import jsonable

        with open(path, "w", encoding="utf-8") as f:
            json.dump(jsonable({"kind": self.kind, "info": self.info, "rows": self.rows}), f,
                      indent=1)

    def table(self):
        from rich.table import Table

        from .render import fmt

        t = Table(title=f"lowbit bench ({self.kind}): {self.info.get('title', '')}")
        cols = [c for c in self.rows[0] if c not in ("backends",)] + ["backends"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("config", "shape", "backends", "path")
                         else "right", overflow="fold")
        for r in self.rows:
            t.add_row(*[fmt(r.get(c)) if not isinstance(r.get(c), str) else r[c]
                        for c in cols])
        return t

    def plot(self) -> str:
        """Speed vs accuracy (model) or GOP/s per shape (gemm), as an inline ``<img>``."""
        from .render import figure, png

        fig, ax = figure(size=(8, 4.5))
        ax = ax[0][0]
        if self.kind == "model":
            for r in self.rows:
                drop = max(r["accuracy_drop"], 1e-7)
                ax.scatter(drop, r["speedup_b32"], color="#d62728" if r["path"] != "real"
                           else "#1f77b4")
                ax.annotate(r["config"], (drop, r["speedup_b32"]), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("accuracy drop vs FP32 (1 - mean cosine; floor 1e-7)")
            ax.set_ylabel("speedup vs FP32, batch 32 (x)")
            ax.set_title("speed vs accuracy (red: emulated or mixed path)", fontsize=9)
        else:
            shapes = list(dict.fromkeys(r["shape"] for r in self.rows))
            configs = list(dict.fromkeys(r["config"] for r in self.rows))
            w = 0.8 / len(shapes)
            for i, s in enumerate(shapes):
                vals = {r["config"]: r["gops"] for r in self.rows if r["shape"] == s}
                ax.bar([j + i * w for j in range(len(configs))],
                       [vals.get(c, 0) for c in configs], width=w, label=s)
            ax.set_xticks([j + 0.4 - w / 2 for j in range(len(configs))])
            ax.set_xticklabels(configs, rotation=45, fontsize=7)
            ax.set_ylabel("GOP/s")
            ax.set_yscale("log")
            ax.legend(fontsize=6, title="M x K x N", title_fontsize=6)
        return png(fig)


def _linear_model(k: int, n: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(k, n)).eval()


def bench_gemm(shapes=GEMM_SHAPES, configs=MATRIX, repeats: int = 10,
               progress=None) -> BenchResult:
    """The matrix on single Linear layers (see the module doc)."""
    from ..ptq import quantize_model

    rows = []
    for m, k, n in shapes:
        base = _linear_model(k, n)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = base(x)
        for name, recipe in configs.items():
            with warnings.catch_warnings():  # presets' Embedding rules match nothing here
                warnings.simplefilter("ignore", UserWarning)
                model = base if recipe is None else quantize_model(
                    copy.deepcopy(base), recipe, calib_data=[x], progress=False)
            t32 = time_call(lambda b=base, x=x: b(x), repeats)
            t = t32 if recipe is None else time_call(lambda q=model, x=x: q(x), repeats)
            with torch.no_grad():
                y = model(x).float()
            err = (ref - y).double().pow(2).sum()
            sqnr = float("inf") if err == 0 else float(
                10 * torch.log10(ref.double().pow(2).sum() / err))
            layer = model[0]
            nbytes = int(getattr(layer, "nbytes", 0)) or sum(
                p.numel() * p.element_size() for p in layer.parameters())
            backends = _backends(model)
            rows.append({"shape": f"{m}x{k}x{n}", "config": name, "ms": t * 1e3,
                         "gops": 2 * m * k * n / t / 1e9, "speedup": t32 / t,
                         "sqnr_db": sqnr, "weight_bytes": nbytes, "path": _path(backends),
                         "backends": backends})
            if progress:
                progress(rows[-1])
    return BenchResult("gemm", rows, {"title": "y = x @ W.T + b per scheme", "repeats": repeats,
                                      "torch": torch.__version__,
                                      "threads": torch.get_num_threads()})


def bench_model(model, latency_fn, metric, configs=MATRIX, *, calib_data=None, size_fn=None,
                title: str = "", progress=None) -> BenchResult:
    """The matrix on a model (see the module doc).

    Args:
        model: the float model (left unchanged).
        latency_fn: ``latency_fn(model, batch_size) -> seconds`` (median of a forward pass).
        metric: ``metric(model) -> float``, higher is better (cosine to FP32 embeddings).
        calib_data: batches for static activation calibration (INT8).
        size_fn: ``size_fn(model) -> bytes`` (default ``advisor.model_nbytes``).
    """
    from ..ptq import quantize_model
    from .advisor import model_nbytes

    size_fn = size_fn or model_nbytes
    base_metric = metric(model)
    rows = []
    for name, recipe in configs.items():
        q = model if recipe is None else quantize_model(
            copy.deepcopy(model), recipe, calib_data=calib_data, progress=False).eval()
        with PeakRSS() as mem:
            t1, t32 = latency_fn(q, 1), latency_fn(q, 32)
        ref1, ref32 = (t1, t32) if recipe is None else (latency_fn(model, 1),
                                                        latency_fn(model, 32))
        backends = _backends(q)
        rows.append({"config": name, "recipe": recipe or "-", "size_mb": size_fn(q) / 1e6,
                     "latency_b1_ms": t1 * 1e3, "latency_b32_ms": t32 * 1e3,
                     "sentences_per_s": 32 / t32, "speedup_b1": ref1 / t1,
                     "speedup_b32": ref32 / t32,
                     "peak_rss_mb": None if mem.peak is None else mem.peak / 1e6,
                     "rss_growth_mb": None if mem.growth is None else mem.growth / 1e6,
                     "accuracy_drop": base_metric - metric(q), "path": _path(backends),
                     "backends": backends})
        if progress:
            progress(rows[-1])
        del q
    return BenchResult("model", rows, {"title": title, "torch": torch.__version__,
                                       "threads": torch.get_num_threads(),
                                       "float_metric": base_metric})
