"""lowbit native A8W4 GEMM against its peers, side by side in one process.

    python benchmarks/a8w4_native.py            # full table (a few minutes on 2 cores)
    python benchmarks/a8w4_native.py --quick    # tiny subset, seconds

Methods (all on the same shapes, same thread count):
  fp32          torch F.linear (x @ w.T), the baseline of every ratio
  lowbit a8w4   lowbit.kernels.native.a8w4_linear: int8 per-row x, int4 g128 weights
  ort nbits     onnxruntime MatMulNBits (com.microsoft), 4 bits, block 128,
                accuracy_level=4 (int8 compute); the same int4 codes and scales as lowbit
  ort int8      onnxruntime DynamicQuantizeLinear + MatMulInteger, per-channel int8 w
  torch dyn     torch.ao.nn.quantized.dynamic.Linear (x86/fbgemm engine), per-channel int8
  torch _int_mm x quantized per row in torch, torch._int_mm, rescale (the whole pipeline)

Timing: every sample is a run of back-to-back calls of one method (~20 ms), preceded by a
short sleep (thread pools of torch, onnxruntime and lowbit spin for a while after a call
and would slow the next method on a 2-core machine), methods in a rotating order,
medians reported. "hot" reuses one
weight; "cold" (M = 1) rotates through enough weight copies to exceed the L3 cache, and
GB/s is the stored weight bytes (codes + scales) read per call.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from machine import cpu_name

from lowbit.kernels import native as nt

L3_BYTES = 32 << 20
GROUP = 128


def quantize_int4(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group: codes int8 [N, K] in -8..7 and fp32 scales [N, K/g]."""
    n, k = w.shape
    wg = w.view(n, k // g, g)
    s = wg.abs().amax(-1) / 7
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.round(wg / s[..., None]).clamp(-8, 7).to(torch.int8).view(n, k)
    return q, s


def canonical(q: torch.Tensor) -> torch.Tensor:
    c = q.to(torch.int32) & 0x0F
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


# ----------------------------------------------------------------------------- methods
# Each factory takes the float weight, its int4 codes/scales, and returns
# (call(x) -> Tensor, stored weight bytes).


def make_fp32(w, q, s, threads):
    return (lambda x: F.linear(x, w)), w.numel() * 4


def make_lowbit(w, q, s, threads):
    pw = nt.pack_a8w4(canonical(q), s, group_size=GROUP)
    return (lambda x: nt.a8w4_linear(x, pw)), pw.data.numel() + pw.scales.numel() * 4


def make_torch_dyn(w, q, s, threads):
    import torch.ao.nn.quantized.dynamic as nnqd

    torch.backends.quantized.engine = "x86"
    n, k = w.shape
    lin = nnqd.Linear(k, n, dtype=torch.qint8)
    sc = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
    qw = torch.quantize_per_channel(w, sc, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
    lin.set_weight_bias(qw, None)
    return (lambda x: lin(x)), n * k + n * 8


def make_int_mm(w, q, s, threads):
    n, k = w.shape
    sw = w.abs().amax(1) / 127
    wt = torch.round(w / sw[:, None]).clamp(-127, 127).to(torch.int8).T.contiguous()

    def call(x):
        qx, sx = nt.quantize_activations(x)
        return torch._int_mm(qx, wt).to(torch.float32) * sx[:, None] * sw

    return call, n * k + n * 4


def _ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def make_ort_nbits(w, q, s, threads):
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    b = (canonical(q) ^ 0x88).view(n, k // GROUP, GROUP // 2).numpy()  # offset binary, zp 8
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=GROUP, accuracy_level=4)
    graph = helper.make_graph(
        [node], "nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(b, "B"),
                     numpy_helper.from_array(s.reshape(-1).numpy(), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return _ort_session(model, threads), b.size + s.numel() * 4


def make_ort_int8(w, q, s, threads):
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    sw = (w.abs().amax(1) / 127).clamp_min(1e-12)
    wq = torch.round(w / sw[:, None]).clamp(-127, 127).to(torch.int8).T.contiguous()
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["A"], ["Aq", "As", "Az"]),
        helper.make_node("MatMulInteger", ["Aq", "B", "Az"], ["Yi"]),
        helper.make_node("Cast", ["Yi"], ["Yf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["Yf", "As"], ["Ys"]),
        helper.make_node("Mul", ["Ys", "Bs"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "int8",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(wq.numpy(), "B"),
                     numpy_helper.from_array(sw.numpy(), "Bs")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _ort_session(model, threads), n * k + n * 4


METHODS = {
    "fp32": make_fp32, "lowbit a8w4": make_lowbit, "ort nbits": make_ort_nbits,
    "ort int8": make_ort_int8, "torch dyn": make_torch_dyn, "torch _int_mm": make_int_mm,
}


# ----------------------------------------------------------------------------- timing


def measure(calls: dict, x: torch.Tensor, reps: int, pause: float,
            target: float) -> dict[str, float]:
    """Median seconds per call; calls[name] is a list of weight copies used in turn.

    One sample = back-to-back calls of one method lasting about ``target`` seconds
    (steady state, as inside a model), preceded by ``pause`` so the thread pool of the
    method measured before has stopped spinning.
    """
    names = list(calls)
    times: dict[str, list[float]] = {nm: [] for nm in names}
    inner: dict[str, int] = {}
    for nm in names:  # warm-up: one call per copy, then size the inner loop
        for f in calls[nm]:
            f(x)
        t0 = time.perf_counter()
        calls[nm][0](x)
        inner[nm] = max(1, min(200, round(target / max(time.perf_counter() - t0, 1e-6))))
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for nm in order:
            fs, n_in = calls[nm], inner[nm]
            time.sleep(pause)
            t0 = time.perf_counter()
            for i in range(n_in):
                fs[(r * n_in + i) % len(fs)](x)
            times[nm].append((time.perf_counter() - t0) / n_in)
    return {nm: statistics.median(v) for nm, v in times.items()}


def run_shape(m, k, n, threads, reps, cold, methods, pause, target):
    gen = torch.Generator().manual_seed(m * 31 + k + n)
    x = torch.randn(m, k, generator=gen)
    n_copies = 1
    calls, nbytes, outs = {}, {}, {}
    for nm in methods:
        copies = []
        for c in range(64):
            w = torch.randn(n, k, generator=gen) / math.sqrt(k)
            q, s = quantize_int4(w, GROUP)
            try:
                f, b = METHODS[nm](w, q, s, threads)
                if c == 0:
                    ref = F.linear(x, w)
                    outs[nm] = float((f(x) - ref).norm() / ref.norm())
            except Exception as exc:  # noqa: BLE001 - a peer missing or refusing: say so, go on
                print(f"  [{nm}] unavailable: {type(exc).__name__}: {exc}")
                break
            copies.append(f)
            nbytes[nm] = b
            n_copies = max(2, math.ceil(2 * L3_BYTES / b)) if cold else 1
            if len(copies) >= n_copies:
                break
        if copies:
            calls[nm] = copies
    return measure(calls, x, reps, pause, target), nbytes, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few samples")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--pause-ms", type=float, default=20.0,
                    help="sleep before each sample so other pools stop spinning")
    ap.add_argument("--sample-ms", type=float, default=20.0,
                    help="length of one sample of back-to-back calls")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shapes", default=None,
                    help="comma-separated MxKxN, suffix 'c' for cold weights: 1x4096x4096c")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(args.threads)
    nt.set_num_threads(args.threads)
    if args.quick:
        shapes = [(1, 512, 512, False), (16, 1024, 512, False)]
        reps = args.reps or 5
    else:
        shapes = [(1, 4096, 4096, False), (1, 4096, 4096, True), (16, 4096, 4096, False),
                  (128, 4096, 4096, False), (512, 1024, 1024, False),
                  (2048, 4096, 4096, False)]
        reps = args.reps or 15
    if args.shapes:
        shapes = []
        for tok in args.shapes.split(","):
            tok = tok.strip().lower()
            m, k, n = (int(v) for v in tok.rstrip("c").split("x"))
            shapes.append((m, k, n, tok.endswith("c")))

    import onnxruntime as ort
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    console.print(f"[bold]A8W4 GEMM[/] on {cpu_name()}, {args.threads} threads; torch "
                  f"{torch.__version__}, onnxruntime {ort.__version__}, lowbit path "
                  f"{nt.isa()}; weights int4 symmetric, group {GROUP}; pause "
                  f"{args.pause_ms:g} ms; medians of {reps}")
    table = Table(show_lines=False)
    for col in ("M x K x N", "weights", "method", "ms", "GOP/s", "w GB/s", "x fp32",
                "rel err"):
        table.add_column(col, justify="left" if col in ("method", "M x K x N") else "right")
    for m, k, n, cold in shapes:
        r = reps if m * k * n < 2**33 else max(3, reps // 3)
        t, nbytes, err = run_shape(m, k, n, args.threads, r, cold, methods,
                                   args.pause_ms / 1e3, args.sample_ms / 1e3)
        base = t.get("fp32")
        for i, nm in enumerate(t):
            sec = t[nm]
            table.add_row(
                f"{m} x {k} x {n}" if i == 0 else "", ("cold" if cold else "hot") if i == 0
                else "", nm, f"{sec * 1e3:.3f}", f"{2 * m * k * n / sec / 1e9:.0f}",
                f"{nbytes[nm] / sec / 1e9:.1f}", f"{base / sec:.2f}" if base else "-",
                f"{err[nm]:.4f}", end_section=i == len(t) - 1)
    console.print(table)
    console.print("GOP/s counts 2*M*K*N; w GB/s = stored weight bytes / time; rel err = "
                  "|y - fp32| / |fp32| against the float weight each method quantized.")


if __name__ == "__main__":
    main()
