"""lowbit quantize/dequantize throughput against its peers, side by side in one process.

    python benchmarks/quantize.py            # 4096 x 4096 fp32, every method (~1-2 min)
    python benchmarks/quantize.py --quick    # 1024 x 1024, fewer runs, no torch reference

GB/s counts the fp32 tensor: the input of quantize, the output of dequantize (4 bytes per
element), so an fp32 copy (``x.clone()``) is the ceiling to compare with.

Methods, per scheme:
  lowbit native     lb.quantize / lb.dequantize with the native kernels (lowbit.quant.fast)
  lowbit torch      the same calls with the fast path off: the pure-torch reference
  torch q_per_*     torch.quantize_per_tensor / quantize_per_channel (int8; amax to scale
                    inside the timed call, as lowbit's), .dequantize()
  torch int8 chan   pure torch: s = amax/127 per row, round(x / s).clamp(-128, 127).to(int8)
  torch fp8         pure torch: s = amax/448, (x / s).clamp(-448, 448).to(float8_e4m3fn)
  torchao to_mx     torchao.prototype.mx_formats to_mx / to_dtype (mxfp8, mxfp4)
  torchao nvfp4     torchao nvfp4_quantize (two-level scales), where installed

Timing: medians of several runs, each after a short pause (thread pools spin for a while
after a call and would slow the next method on a 2-core machine); "x native" is lowbit
native's throughput divided by the row's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
from machine import cpu_name

import lowbit as lb
from lowbit import _native
from lowbit.quant import fast
from lowbit.quant import native as nat

SCHEMES = ["int8", "int8:channel", "int4:g128", "fp8_e4m3fn", "mxfp8", "mxfp4", "nvfp4"]


def timeit(fn, runs: int, pause: float = 0.02) -> float:
    """Median seconds of ``runs`` calls, one warm-up call first."""
    fn()
    times = []
    for _ in range(runs):
        time.sleep(pause)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _reference(fn, *args):
    """``fn(*args)`` with lowbit's fast paths off (the torch reference runs)."""
    saved = fast.quantize, fast.dequantize
    fast.quantize = fast.dequantize = lambda *a: None
    try:
        return fn(*args)
    finally:
        fast.quantize, fast.dequantize = saved


def peers(x: torch.Tensor) -> dict[str, list[tuple[str, object, object]]]:
    """scheme -> [(name, quantize(), dequantize())] of the peers installed here."""
    out: dict[str, list] = {s: [] for s in SCHEMES}
    zero = torch.zeros(x.shape[0], dtype=torch.long)  # scales computed inside, as lowbit does
    out["int8"].append(("torch quantize_per_tensor",
                        lambda: torch.quantize_per_tensor(x, float(x.abs().amax() / 127), 0,
                                                          torch.qint8),
                        lambda q: q.dequantize()))
    out["int8:channel"].append(("torch quantize_per_channel",
                                lambda: torch.quantize_per_channel(
                                    x, (x.abs().amax(1) / 127).double(), zero, 0, torch.qint8),
                                lambda q: q.dequantize()))

    def int8_rows():
        s = x.abs().amax(1, keepdim=True) / 127
        return torch.round(x / s).clamp(-128, 127).to(torch.int8), s

    out["int8:channel"].append(("pure torch int8 per-row", int8_rows,
                                lambda qs: qs[0].float() * qs[1]))

    def fp8_tensor():
        s = x.abs().amax() / 448
        return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn), s

    out["fp8_e4m3fn"].append(("pure torch fp8 cast", fp8_tensor, lambda qs: qs[0].float() * qs[1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor
        for scheme, dt in [("mxfp8", torch.float8_e4m3fn), ("mxfp4", torch.float4_e2m1fn_x2)]:
            out[scheme].append((f"torchao to_mx ({scheme})",
                                lambda dt=dt: mx_tensor.to_mx(x, dt, 32),
                                lambda sd, dt=dt: mx_tensor.to_dtype(sd[1], sd[0], dt, 32,
                                                                     torch.float32)))
        out["nvfp4"].append(("torchao nvfp4_quantize",
                             lambda: nvfp4_tensor.nvfp4_quantize(
                                 x, 16, nvfp4_tensor.per_tensor_amax_to_scale(x.abs().amax())),
                             None))
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small tensor, few runs")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per method")
    ap.add_argument("--no-reference", action="store_true", help="skip lowbit's torch path")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # deprecation notes of torch.quantize_per_* and torchao
    n = 1024 if args.quick else 4096
    runs = args.runs or (3 if args.quick else 7)
    ref_runs = 1 if args.quick else 3
    x = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    gb = x.numel() * 4 / 1e9

    from rich.console import Console
    from rich.table import Table

    lib = nat.library()
    isa = "AVX-512" if nat.set_isa(-1) == 1 else "scalar C"
    console = Console(width=118)
    console.print(f"[bold]quantize / dequantize, {n} x {n} fp32[/]  CPU: {cpu_name()}, "
                  f"{os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} "
                  f"threads); lowbit native: {'off' if lib is None else isa}, "
                  f"{_native.num_threads()} threads; medians of {runs} runs")
    copy = timeit(lambda: x.clone(), runs)
    table = Table("scheme", "method", "quantize GB/s", "x native", "dequantize GB/s", "x native")
    table.add_row("-", "fp32 copy (x.clone())", f"{gb / copy:.2f}", "", f"{gb / copy:.2f}", "")
    all_peers = peers(x)
    for scheme in SCHEMES:
        q = lb.quantize(x, scheme)
        tq = timeit(lambda s=scheme: lb.quantize(x, s), runs)
        td = timeit(lambda q=q: lb.dequantize(q), runs)
        table.add_row(scheme, "lowbit native" if lib is not None else "lowbit (torch)",
                      f"{gb / tq:.2f}", f"{copy / tq:.2f} of copy",
                      f"{gb / td:.2f}", f"{copy / td:.2f} of copy")
        rows = []
        if not args.quick and not args.no_reference and lib is not None:
            rows.append(("lowbit torch reference", lambda s=scheme: _reference(lb.quantize, x, s),
                         lambda qq: _reference(lb.dequantize, qq)))
        for name, fq, fd in rows + all_peers[scheme]:
            try:
                tpq = timeit(fq, ref_runs if name.startswith("lowbit") else runs)
                out = fq()
                tpd = timeit(lambda f=fd, o=out: f(o), runs) if fd is not None else None
            except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
                table.add_row(scheme, name, f"failed: {type(exc).__name__}", "", "", "")
                continue
            table.add_row("", name, f"{gb / tpq:.2f}", f"{tpq / tq:.1f}",
                          "-" if tpd is None else f"{gb / tpd:.2f}",
                          "" if tpd is None else f"{tpd / td:.1f}")
        table.add_section()
    console.print(table)
    console.print("x native: lowbit native's speed over the row's (> 1: lowbit is faster); "
                  "'of copy': lowbit native's speed over the fp32 copy's.")


if __name__ == "__main__":
    main()
