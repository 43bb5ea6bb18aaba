"""``lowbit debug``: per-layer error of a quantized model, with a fix for each bad layer."""

from __future__ import annotations

from rich.console import Console


def add_parser(sub) -> None:
    p = sub.add_parser("debug", help="per-layer error report of a recipe on a model (table, "
                                     "HTML with plots, JSON)")
    p.add_argument("--model", default="minilm",
                   help="bundled model name (minilm) or a local Hugging Face model folder")
    p.add_argument("--recipe", default="a8w4", help="preset name or recipe file")
    p.add_argument("--sentences", type=int, default=64, help="evaluation sentences run through")
    p.add_argument("--calib", type=int, default=128, help="calibration sentences (static acts)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-sqnr", type=float, default=20.0,
                   help="layers with output SQNR below this (dB) need requantization")
    p.add_argument("--k-sigma", type=float, default=6.0, help="outlier threshold (std)")
    p.add_argument("--clip-threshold", type=float, default=0.05,
                   help="a channel is saturated above this share of clipped values")
    p.add_argument("--top", type=int, default=None, help="show only the N worst layers")
    p.add_argument("--html", default=None, help="write the HTML report here")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--fixed-recipe", default=None, metavar="FILE",
                   help="write the recipe with every suggested per-layer fix applied "
                        "(.toml/.json/.yaml), for lowbit quantize --recipe FILE")
    p.add_argument("--sensitivity", default=None, metavar="HTML",
                   help="also measure each layer's sensitivity (quantized alone / left in "
                        "float alone; mean cosine of sentence embeddings to FP32) and write "
                        "its table and plot here (one model pass per layer, two ways)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis import debug
    from ..models import get_model, sentences

    console = Console(width=220)
    enc = get_model(args.model)
    data = list(enc.batches(sentences("eval", args.sentences), args.batch_size))
    calib = list(enc.batches(sentences("calib", args.calib), args.batch_size))
    console.print(f"[bold]lowbit debug[/]: model {args.model}, recipe {args.recipe}, "
                  f"{args.sentences} sentences ({len(data)} batches)")
    report = debug(enc.model, args.recipe, data, calib_data=calib, k_sigma=args.k_sigma,
                   clip_threshold=args.clip_threshold, min_sqnr_db=args.min_sqnr)
    report.print(top=args.top, console=console)
    bad = [r for r in report.records if r.needs_requantization]
    console.print(f"{len(bad)} of {len(report.records)} layers need requantization "
                  f"(output SQNR < {args.min_sqnr} dB or clipped activation channels).")
    if args.html:
        report.to_html(args.html)
        console.print(f"HTML report: [bold]{args.html}[/] (self-contained, opens offline)")
    if args.json:
        report.to_json(args.json)
        console.print(f"JSON report: [bold]{args.json}[/]")
    if args.fixed_recipe:
        report.fixed_recipe().save(args.fixed_recipe)
        console.print(f"Recipe with the fixes: [bold]{args.fixed_recipe}[/] "
                      f"(lowbit quantize --recipe {args.fixed_recipe})")
    if args.sensitivity:
        from ..analysis import sensitivity
        from ..models import compare

        sents = sentences("eval", args.sentences)
        ref = enc.embed(sents)

        def cosine(model):
            return compare(ref, enc.embed(sents, model=model))["mean_cos"]

        sens = sensitivity(enc.model, args.recipe, calib, cosine,
                           metric_name="mean cosine to FP32 embeddings")
        sens.print(console)
        sens.to_html(args.sensitivity)
        console.print(f"Sensitivity: [bold]{args.sensitivity}[/]")
    return 0
