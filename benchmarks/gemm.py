"""GEMM benchmark: lowbit.kernels paths side by side with torch, torch.ao and onnxruntime.

    .venv/bin/python benchmarks/gemm.py                     # every shape, hot and cold
    .venv/bin/python benchmarks/gemm.py --shapes 1x4096x4096,128x4096x4096 --mode hot

Per shape (M, K, N) it times y = x @ W.T (W [N, K]) with, in one process:

  fp32            torch F.linear, fp32 (the baseline of every ratio)
  bf16            torch F.linear, bf16 operands        | lowbit bf16   K.linear (bf16 path)
  A8W8 dynamic    lowbit K.linear, act int8:token, W int8 per channel (activation
                  quantization included) | torch.ao dynamic quantized Linear (x86 engine;
                  uint8 per-tensor activations) | torch._int_mm alone (no quantization)
                  | onnxruntime DynamicQuantizeLinear + MatMulInteger (dynamic int8)
  A8W4 g128       lowbit K.linear, act int8:token, W int4:g128 (native kernel)
                  | onnxruntime MatMulNBits 4-bit, block 128, accuracy_level 4 (int8 compute)
  W4A16 g128      lowbit K.linear, bf16 x, W int4:g128 (weight-only)
  W8A16           lowbit K.linear, bf16 x, W int8 per channel (weight-only)

Method (2 shared cores: thread pools of onnxruntime/OpenMP/OpenBLAS keep spinning after a
call and slow the next one): every sample starts with a pause (the other pools go idle),
then untimed calls for --warm-ms (at least one: on this VM the first calls after an idle
pause run 2-5x slower while the cores and the method's own threads wake up; they also
fill the cache when hot), then --reps timed back-to-back calls (3 when a call takes over
10 ms), as a model's forward pass makes them; a sample is the median of those calls,
the result the median of the rounds, with the order of methods rotated on every round. "hot": the same weight every call (in cache when it fits);
"cold": a rotation through enough copies of the weight to exceed 10x the 32 MiB L3, so
every call reads its weight from memory (with 3x, a third of an int8 weight still came from
the L3, whose replacement is not LRU: A8W8 read at 44 GB/s, more than the memory gives).
Cold shapes also measure the memory's read bandwidth (torch's sum of 256 MiB) just before
their methods run. onnxruntime keeps its default spinning workers
when hot (one session); cold needs a session per weight copy, and a dozen sessions'
spinning workers slow every other method several-fold (fp32 3.3 -> 23 ms at M=1), so
there its sessions run with allow_spinning=0.
Prints ms, GOP/s (2*M*K*N per second), GB/s (the stored weight, codes and scales, read
per second), the share of the measured memory bandwidth (cold) and the speed ratio to fp32.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch
import torch.nn.functional as F
from machine import cpu_name, memory_read_gbs

import lowbit as lb
import lowbit.kernels as K

COLD_MIB = 320  # cold weight copies: 10x the 32 MiB L3
SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (512, 1024, 1024),
          (2048, 4096, 4096)]


def _ort_int8(w: torch.Tensor, spin: bool):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    sw = (w.abs().amax(1) / 127).clamp(min=1e-12)
    wq = torch.round(w / sw[:, None]).clamp(-127, 127).to(torch.int8).T.contiguous()
    inits = [numpy_helper.from_array(wq.numpy(), "W"),
             numpy_helper.from_array(np.zeros((), np.int8), "WZ"),
             numpy_helper.from_array(sw.numpy().astype(np.float32), "WS")]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "W", "xz", "WZ"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "WS"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
    ]
    return _ort_session(nodes, inits, k, n, [helper.make_opsetid("", 17)], spin)


def _ort_nbits(w: torch.Tensor, spin: bool, block: int = 128):
    import numpy as np
    from onnx import helper, numpy_helper

    n, k = w.shape
    q = lb.quantize(w, f"int4:g{block}")
    u = (q.codes ^ 0x88).reshape(n, k // block, block // 2)  # unsigned codes, zero point 8
    inits = [numpy_helper.from_array(u.numpy(), "B"),
             numpy_helper.from_array(q.scale.reshape(-1).numpy().astype(np.float32), "S")]
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=block, accuracy_level=4)]
    return _ort_session(nodes, inits, k, n, [helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.microsoft", 1)], spin)


def _ort_session(nodes, inits, k, n, opsets, spin):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9  # readable by every onnxruntime since 1.15
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    if not spin:  # cold mode holds a dozen sessions: their idle workers would spin for ever
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def _ao_linear(w: torch.Tensor):
    torch.backends.quantized.engine = "x86"
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                  dtype=torch.qint8)


def methods(w: torch.Tensor, have_ort: bool, cold: bool = False):
    """name -> (build(w) -> state, run(state, x_fp32, x_bf16), bytes of one stored weight)."""
    n, k = w.shape
    i8, i4 = n * k + 4 * n, n * k // 2 + 4 * n * (k // 128)  # codes + fp32 scales
    m = {
        "fp32 torch": (lambda w: w.clone(), lambda s, x, xb: F.linear(x, s), 4 * n * k),
        "bf16 torch": (lambda w: w.bfloat16(), lambda s, x, xb: F.linear(xb, s), 2 * n * k),
        "bf16 lowbit": (lambda w: K.prepare(w.bfloat16()), lambda s, x, xb: K.linear(xb, s),
                        2 * n * k),
        "A8W8 lowbit": (lambda w: K.prepare(lb.quantize(w, "int8:channel"), "int8:token"),
                        lambda s, x, xb: K.linear(x, s), i8),
        "A8W8 torch.ao": (_ao_linear, lambda s, x, xb: s(x), i8),
        "int_mm raw": (lambda w: lb.quantize(w, "int8:channel").codes.view(torch.int8),
                       lambda s, x, xb: torch._int_mm(x_i8(x), s.t()), n * k),
        "A8W4 lowbit": (lambda w: K.prepare(lb.quantize(w, "int4:g128"), "int8:token"),
                        lambda s, x, xb: K.linear(x, s), i4),
        "W4A16 lowbit": (lambda w: K.prepare(lb.quantize(w, "int4:g128")),
                         lambda s, x, xb: K.linear(xb, s), i4),
        "W8A16 lowbit": (lambda w: K.prepare(lb.quantize(w, "int8:channel")),
                         lambda s, x, xb: K.linear(xb, s), i8),
    }
    if have_ort:
        m["A8W8 onnxruntime"] = (lambda w: _ort_int8(w, not cold), lambda s, x, xb: s(x.numpy()),
                                  i8)
        m["A8W4 ort MatMulNBits"] = (lambda w: _ort_nbits(w, not cold),
                                      lambda s, x, xb: s(x.numpy()), i4)
    return m


_XI8: dict = {}


def x_i8(x):
    key = (x.data_ptr(), tuple(x.shape))
    if key not in _XI8:
        _XI8.clear()
        _XI8[key] = torch.randint(-127, 128, x.shape, dtype=torch.int8)
    return _XI8[key]


def bench_shape(shape, mode, rounds, pause, have_ort, only=None, cold_bytes=COLD_MIB * 2**20,
                reps=7, warm_s=0.01):
    mm, k, n = shape
    torch.manual_seed(0)
    w = torch.randn(n, k) / math.sqrt(k)
    x = torch.randn(mm, k)
    xb = x.bfloat16()
    table = methods(w, have_ort, cold=mode == "cold")
    if only:
        table = {name: v for name, v in table.items() if any(o in name for o in only)}
    states = {}
    for name, (build, run, nbytes) in table.items():
        copies = 1 if mode == "hot" else max(2, math.ceil(cold_bytes / nbytes))
        ws = [w if i == 0 else w + 1e-3 * torch.randn_like(w) for i in range(copies)]
        states[name] = [build(wi) for wi in ws]
        for st in states[name]:  # warm up every copy: lazy packing, first-call costs
            run(st, x, xb)
    times = {name: [] for name in table}
    turn = {name: itertools.cycle(states[name]) for name in table}  # cold: never a recent copy
    names = list(table)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            run, copies = table[name][1], turn[name]
            time.sleep(pause)  # let every other pool go idle first
            t0 = time.perf_counter()
            calls = [t0]
            while len(calls) == 1 or (calls[-1] - t0 < warm_s and len(calls) < 200):
                run(next(copies), x, xb)
                calls.append(time.perf_counter())
            timed = reps if calls[1] - t0 < 0.01 else 3  # big shapes: fewer, long calls
            burst = []
            for _ in range(timed):
                st = next(copies)
                t1 = time.perf_counter()
                run(st, x, xb)
                burst.append(time.perf_counter() - t1)
            times[name].append(statistics.median(burst))
    return {name: (statistics.median(t), table[name][2]) for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                    help="comma-separated MxKxN")
    ap.add_argument("--mode", choices=("hot", "cold", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--pause", type=float, default=0.1,  # onnxruntime spins ~50 ms after a run
                    help="seconds before each sample")
    ap.add_argument("--reps", type=int, default=7,
                    help="timed back-to-back calls per sample, after the warm-up calls")
    ap.add_argument("--warm-ms", type=float, default=10.0,
                    help="untimed calls for at least this long before each sample")
    ap.add_argument("--only", default="", help="comma-separated substrings of method names")
    ap.add_argument("--cold-mib", type=int, default=COLD_MIB,
                    help="cold mode: weight copies totalling at least this many MiB (10x L3)")
    args = ap.parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort

        have_ort, ort_v = True, ort.__version__
    except ImportError:
        have_ort, ort_v = False, "not installed"
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, onnxruntime {ort_v}, lowbit {lb.__version__}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    modes = ("hot", "cold") if args.mode == "both" else (args.mode,)
    only = [o for o in args.only.split(",") if o] or None
    for mode in modes:
        for shape in shapes:
            bw = memory_read_gbs() if mode == "cold" else None
            res = bench_shape(shape, mode, args.rounds, args.pause, have_ort, only,
                              args.cold_mib * 2**20, args.reps,
                              args.warm_ms / 1e3)
            gop = 2 * math.prod(shape) / 1e9
            base = res.get("fp32 torch", (None,))[0]
            print(f"\n## M={shape[0]} K={shape[1]} N={shape[2]}, weights {mode}")
            if bw:
                print(f"memory read bandwidth just before: {bw:.1f} GB/s (torch sum of 256 MiB)")
            print(f"{'method':24s} {'ms':>9s} {'GOP/s':>8s} {'GB/s':>7s}"
                  f"{' % mem' if bw else ''} {'x fp32':>7s}")
            for name, (t, nbytes) in res.items():
                ratio = f"{base / t:7.2f}" if base else "      -"
                share = f" {100 * nbytes / t / 1e9 / bw:5.0f}" if bw else ""
                print(f"{name:24s} {t * 1e3:9.3f} {gop / t:8.1f} {nbytes / t / 1e9:7.1f}{share} "
                      f"{ratio}")


if __name__ == "__main__":
    main()
