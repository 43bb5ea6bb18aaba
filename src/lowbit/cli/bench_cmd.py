"""``lowbit bench``: the seed's benchmark matrix on GEMM shapes and on a model."""

from __future__ import annotations

import html
import json
import platform

from rich.console import Console


def add_parser(sub) -> None:
    from ..analysis import MATRIX

    p = sub.add_parser("bench", help="benchmark matrix: FP32/FP16/BF16/A8W8/A8W4/INT8/FP8/"
                                     "MXFP8/MXFP4/MX6/NVFP4 on GEMMs and on a model")
    p.add_argument("--model", default="minilm",
                   help="bundled model name (minilm) or a local Hugging Face model folder")
    p.add_argument("--configs", nargs="*", default=list(MATRIX), metavar="CONFIG",
                   help=f"rows to run (default all: {', '.join(MATRIX)})")
    p.add_argument("--quick", action="store_true",
                   help="fewer sentences, repeats and shapes (a smoke run, ~minutes)")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM matrix")
    p.add_argument("--no-model", action="store_true", help="skip the model matrix")
    p.add_argument("--sentences", type=int, default=256, help="sentences for accuracy")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per latency")
    p.add_argument("--json", default="bench.json", help="write results here")
    p.add_argument("--html", default=None, help="write tables and plots here")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..analysis import GEMM_SHAPES, MATRIX, bench_gemm, bench_model
    from ..analysis.render import jsonable
    from ..models import compare, get_model, model_bytes, sentences

    unknown = [c for c in args.configs if c not in MATRIX]
    if unknown:
        raise ValueError(f"--configs: unknown {unknown}; choose from {', '.join(MATRIX)}")
    configs = {"FP32": None, **{c: MATRIX[c] for c in args.configs}}
    n_sent = 32 if args.quick else args.sentences
    repeats = 3 if args.quick else args.repeats
    console = Console(width=200)
    machine = f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    console.print(f"[bold]lowbit bench[/] on {machine}")
    results, report = {}, []
    if not args.no_gemm:
        shapes = GEMM_SHAPES[:1] if args.quick else GEMM_SHAPES
        r = bench_gemm(shapes, configs, repeats,
                       progress=lambda row: console.print(f"  {row['shape']} {row['config']}: "
                                                          f"{row['gops']:.1f} GOP/s"))
        console.print(r.table())
        results["gemm"], report = r, report + [r]
    if not args.no_model:
        enc = get_model(args.model)
        sents = sentences("eval", n_sent)
        ref = enc.embed(sents)
        calib = list(enc.batches(sentences("calib", 64 if args.quick else 256)))

        def latency(model, bs):
            return enc.latency(model, batch_size=bs, seq_len=32, repeats=repeats)

        def metric(model):
            return compare(ref, enc.embed(sents, model=model))["mean_cos"]

        r = bench_model(enc.model, latency, metric, configs, calib_data=calib,
                        size_fn=model_bytes, title=f"{args.model}, batch x 32 tokens, "
                        f"accuracy on {n_sent} sentences (1 - mean cosine)",
                        progress=lambda row: console.print(
                            f"  {row['config']}: {row['latency_b32_ms']:.1f} ms at batch 32, "
                            f"drop {row['accuracy_drop']:.2e}"))
        console.print(r.table())
        results["model"], report = r, report + [r]
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(jsonable({k: {"info": v.info, "rows": v.rows} for k, v in results.items()}
                           | {"machine": machine}), f, indent=1)
    console.print(f"JSON: [bold]{args.json}[/]")
    if args.html:
        from ..analysis.render import html_table, page

        body = f"<p>{html.escape(machine)}</p>"
        for r in report:
            cols = list(r.rows[0])
            body += (f"<h2>{r.kind}: {html.escape(r.info.get('title', ''))}</h2>" + r.plot()
                     + html_table(cols, [[row[c] for c in cols] for row in r.rows]))
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page("lowbit benchmark matrix", body))
        console.print(f"HTML: [bold]{args.html}[/]")
    return 0
