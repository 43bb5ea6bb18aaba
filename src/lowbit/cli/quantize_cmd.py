"""``lowbit quantize``: quantize a model with a recipe, measure it against FP32, save it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model with a recipe and measure the cost")
    p.add_argument("--model", default="minilm",
                   help="bundled model name (minilm) or a local Hugging Face model folder")
    p.add_argument("--recipe", default="a8w4",
                   help="preset name (a8w8, a8w4, bert-a8w4, int8, fp8, mxfp4, ...) or a "
                        "recipe file (.toml/.json/.yaml)")
    p.add_argument("--calib", type=int, default=256, help="calibration sentences")
    p.add_argument("--eval", type=int, default=1000, dest="n_eval", help="evaluation sentences")
    p.add_argument("--out", default=None,
                   help="folder to save the quantized model (default out/MODEL-RECIPE)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per latency sample")
    p.set_defaults(run=run)


def _speed(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run(args) -> int:
    from ..models.job import quantize_job
    from ..recipes import Recipe

    console = Console()
    recipe = Recipe.resolve(args.recipe)
    out = args.out or f"out/{args.model.rstrip('/').split('/')[-1]}-{recipe.name}"
    console.print(f"[bold]lowbit quantize[/]: model {args.model}, recipe {recipe.name}, "
                  f"{args.calib} calibration / {args.n_eval} evaluation sentences")
    r = quantize_job(args.model, recipe, args.calib, args.n_eval, out, True, args.repeats)

    layers = Table(title="Converted layers")
    for col in ["module", "scheme", "backend", "count"]:
        layers.add_column(col)
    for kind, scheme, backend, n in r.layers:
        layers.add_row(kind, scheme, backend, str(n))
    console.print(layers)

    t = Table(title=f"{r.model} with {r.recipe} against FP32 (same process)")
    t.add_column("metric")
    t.add_column("FP32", justify="right")
    t.add_column(r.recipe, justify="right")
    t.add_column("change", justify="right")
    t.add_row("size", _mb(r.fp32_bytes), _mb(r.quant_bytes),
              f"{r.fp32_bytes / r.quant_bytes:.2f}x smaller")
    q = r.quality
    t.add_row("mean cosine to FP32", "1.0000", f"{q['mean_cos']:.4f}", "")
    t.add_row("min cosine to FP32", "1.0000", f"{q['min_cos']:.4f}", "")
    t.add_row("recall@10 of FP32 neighbours", "1.0000", f"{q['recall_at_10']:.4f}", "")
    lat = r.latency_s
    t.add_row("latency batch 32 x 32 tokens", f"{lat['fp32_b32'] * 1e3:.1f} ms",
              f"{lat['quant_b32'] * 1e3:.1f} ms", _speed(r.speedup_b32))
    t.add_row("latency batch 1 x 32 tokens", f"{lat['fp32_b1'] * 1e3:.1f} ms",
              f"{lat['quant_b1'] * 1e3:.1f} ms", _speed(r.speedup_b1))
    console.print(t)
    console.print(f"Saved to [bold]{r.saved_to}[/] (model.safetensors + lowbit.json) in "
                  f"{r.seconds:.0f} s. Load it with lowbit.load_quantized(folder, float_model); "
                  "see per-layer error with [bold]lowbit debug[/].")
    return 0
