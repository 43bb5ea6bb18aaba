"""Every recipe preset on the bundled MiniLM, against FP32 in the same process.

    python benchmarks/presets.py                  # all presets, 1000 eval / 256 calib sentences
    python benchmarks/presets.py a8w8 a8w4 --eval 300 --calib 64 --repeats 3

For each preset: size, mean/min cosine and recall@10 against FP32, latency at batch 32 x 32
tokens and batch 1 (median of interleaved runs with the FP32 model), and the kernels the
layers run. The FP32 reference embeddings are computed once.
"""

from __future__ import annotations

import os

# As in `lowbit quantize`: torch's OpenMP workers wait passively, so they do not spin on the
# core the native kernels' second thread needs (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys

import torch
from rich.console import Console
from rich.table import Table

from lowbit.models.job import Reference, run_recipe
from lowbit.recipes import Recipe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/presets.py", description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", default=Recipe.presets())
    p.add_argument("--eval", type=int, default=1000, dest="n_eval")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    console = Console()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"{platform.processor() or platform.machine()}")
    ref = Reference.build("minilm", args.calib, args.n_eval)
    t = Table(title=f"MiniLM presets vs FP32 ({args.n_eval} eval / {args.calib} calib sentences)")
    for col in ["preset", "size MB", "mean cos", "min cos", "recall@10", "b32 ms (fp32)",
                "b32 speed-up", "b1 ms (fp32)", "b1 speed-up", "kernels"]:
        t.add_column(col, justify="left" if col in ("preset", "kernels") else "right")
    rows = []
    for name in args.presets:
        r = run_recipe(ref, name, progress=False, latency_repeats=args.repeats)
        lat, q = r.latency_s, r.quality
        kernels = ", ".join(sorted({b for _, _, b, _ in r.layers}))
        t.add_row(name, f"{r.quant_bytes / 1e6:.1f}", f"{q['mean_cos']:.4f}",
                  f"{q['min_cos']:.4f}", f"{q['recall_at_10']:.3f}",
                  f"{lat['quant_b32'] * 1e3:.0f} ({lat['fp32_b32'] * 1e3:.0f})",
                  f"{r.speedup_b32:.2f}x",
                  f"{lat['quant_b1'] * 1e3:.1f} ({lat['fp32_b1'] * 1e3:.1f})",
                  f"{r.speedup_b1:.2f}x", kernels)
        rows.append({"preset": name, "bytes": r.quant_bytes, "fp32_bytes": r.fp32_bytes,
                     **q, **lat, "kernels": kernels})
        console.print(f"done: {name}")
    console.print(t)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
