"""``lowbit recommend``: a per-layer plan that meets a size / latency / accuracy constraint,
written as a recipe file for ``lowbit quantize --recipe FILE``."""

from __future__ import annotations

import copy
import json

from rich.console import Console
from rich.table import Table


def add_parser(sub) -> None:
    p = sub.add_parser("recommend", help="per-layer quantization plan under a size, latency or "
                                         "accuracy constraint (writes a recipe)")
    p.add_argument("--model", default="minilm",
                   help="bundled model name (minilm) or a local Hugging Face model folder")
    p.add_argument("--size-mb", type=float, default=None, help="model size budget (MB)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="latency budget (ms, batch 32 x 32 tokens)")
    p.add_argument("--min-cos", type=float, default=None,
                   help="accuracy floor: mean cosine to FP32 embeddings")
    p.add_argument("--priority", default="balanced", choices=["accuracy", "latency", "balanced"])
    p.add_argument("--sentences", type=int, default=64,
                   help="sentences for measuring each layer's sensitivity")
    p.add_argument("--eval", type=int, default=256, dest="n_eval",
                   help="held-out sentences for the final (measured) accuracy")
    p.add_argument("--calib", type=int, default=128, help="calibration sentences")
    p.add_argument("--options", nargs="*", default=None, metavar="OPTION",
                   help="per-layer options to consider (default all: "
                        "fp16 w8 a8w8 w4g32 w4g64 w4g128 a8w4; fp32 is always one)")
    p.add_argument("--out", default="plan.toml", help="recipe file to write (.toml/.json/.yaml)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip measuring the uniform presets for comparison")
    p.add_argument("--json", default=None, help="write plan, measurements and comparison here")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis import OPTIONS, recommend, uniform_recipe
    from ..analysis.render import jsonable
    from ..models import compare, get_model, model_bytes, sentences
    from ..ptq import quantize_model
    from ..recipes import Recipe

    if args.size_mb is None and args.latency_ms is None and args.min_cos is None:
        raise ValueError("give a constraint: --size-mb, --latency-ms or --min-cos")
    console = Console(width=200)
    enc = get_model(args.model)
    sens = sentences("eval", args.sentences)
    held = sentences("eval", args.sentences + args.n_eval)[args.sentences:]
    ref_s, ref_h = enc.embed(sens), enc.embed(held)
    calib = list(enc.batches(sentences("calib", args.calib)))

    def metric(model):
        return compare(ref_s, enc.embed(sens, model=model))["mean_cos"]

    def eval_metric(model):
        return compare(ref_h, enc.embed(held, model=model))["mean_cos"]

    def latency(model):
        return enc.latency(model, batch_size=32, seq_len=32, repeats=5)

    names = list(OPTIONS) if args.options is None else ["fp32", *args.options]
    unknown = [o for o in names if o not in OPTIONS]
    if unknown:
        raise ValueError(f"--options: unknown {unknown}; choose from {', '.join(OPTIONS)}")
    options = {o: OPTIONS[o] for o in names}
    console.print(f"[bold]lowbit recommend[/]: {args.model}; measuring {len(options)} options "
                  f"per layer on {len(sens)} sentences (this takes a few minutes)")
    plan = recommend(enc.model, calib, metric, size_mb=args.size_mb, latency_ms=args.latency_ms,
                     min_metric=args.min_cos, priority=args.priority, options=options,
                     latency_fn=latency,
                     size_fn=model_bytes, eval_metric=eval_metric, calib_data=calib,
                     progress=lambda opt, name: console.print(f"  measured {opt:7} {name}")
                     if name.endswith(("embeddings", "pooler.dense")) else None)
    t = Table(title="Plan: option per layer")
    t.add_column("option")
    t.add_column("layers", justify="right")
    t.add_column("examples")
    by = {}
    for name, opt in plan.assignment.items():
        by.setdefault(opt, []).append(name)
    for opt, names in by.items():
        t.add_row(opt, str(len(names)), ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    console.print(t)
    p, m = plan.predicted, plan.measured
    t = Table(title="Plan: predicted, then measured")
    for c in ["", "size (MB)", "latency b32 (ms)", "mean cos (sens. set)", "mean cos (held out)"]:
        t.add_column(c, justify="right")
    t.add_row("predicted", f"{p['size_mb']:.2f}", f"{p['latency_ms']:.1f}", f"{p['metric']:.5f}",
              "-")
    t.add_row("measured", f"{m['size_mb']:.2f}", f"{m['latency_ms']:.1f}", "-",
              f"{m['metric']:.5f}")
    b = plan.baseline
    t.add_row("FP32 (measured)", f"{b['size_mb']:.2f}", f"{b['latency_ms']:.1f}", "1.00000",
              f"{b['metric']:.5f}")
    console.print(t)
    plan.recipe.save(args.out)
    console.print(f"Recipe written to [bold]{args.out}[/]: lowbit quantize --recipe {args.out}")
    rows = []
    if not args.no_compare:
        cands = [(o, uniform_recipe(o)) for o in options if options[o] is not None]
        cands += [(f"preset {n}", Recipe.preset(n)) for n in Recipe.presets()]
        for label, recipe in cands:
            q = quantize_model(copy.deepcopy(enc.model), recipe, calib_data=calib,
                               progress=False).eval()
            size = model_bytes(q) / 1e6
            fits = args.size_mb is None or size <= args.size_mb
            rows.append({"uniform": label, "size_mb": size,     # accuracy only where it fits
                         "mean_cos": eval_metric(q) if fits else None})
            console.print(f"  uniform {label}: {size:.2f} MB")
            del q
        t = Table(title="Uniform choices on the same held-out sentences")
        for c in ["uniform", "size (MB)", "mean cos", "fits"]:
            t.add_column(c, justify="left" if c == "uniform" else "right")
        budget = args.size_mb
        for r in sorted(rows, key=lambda r: r["size_mb"]):
            fits = budget is None or r["size_mb"] <= budget
            cos = "-" if r["mean_cos"] is None else f"{r['mean_cos']:.5f}"
            t.add_row(r["uniform"], f"{r['size_mb']:.2f}", cos, "yes" if fits else "no")
        console.print(t)
        fit = [r for r in rows if budget is None or r["size_mb"] <= budget]
        if fit:
            best = max(fit, key=lambda r: r["mean_cos"])
            verdict = "beats" if m["metric"] > best["mean_cos"] else "does NOT beat"
            console.print(f"Plan ({m['size_mb']:.2f} MB, cos {m['metric']:.5f}) {verdict} the "
                          f"best uniform choice that fits ({best['uniform']}: "
                          f"{best['size_mb']:.2f} MB, cos {best['mean_cos']:.5f}).")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(jsonable({"plan": plan.to_dict(), "uniform": rows,
                                "measurements": plan.table}), f, indent=1)
    return 0
