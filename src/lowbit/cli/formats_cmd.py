"""``lowbit formats``: every number format, and what each scheme costs on a tensor."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from ..analysis import DEMO_SCHEMES, format_rows, scheme_error_rows


def add_parser(sub) -> None:
    p = sub.add_parser("formats", help="list number formats and the error of each scheme")
    p.add_argument("--rows", type=int, default=256, help="rows of the demo tensor")
    p.add_argument("--cols", type=int, default=1024, help="columns of the demo tensor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schemes", nargs="*", default=DEMO_SCHEMES, metavar="SCHEME")
    p.set_defaults(run=run)


def _num(v: float) -> str:
    return f"{v:.6g}"


def demo_tensor(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows with per-row scales over two decades and a few planted outliers:
    weight-like data where granularity and format choices make a visible difference."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-1, 1, rows)[:, None]
    idx = torch.randint(0, x.numel(), (max(1, x.numel() // 2000),), generator=g)
    x.view(-1)[idx] *= 8
    return x


def run(args) -> int:
    console = Console()
    t = Table(title="Number formats")
    for col in ["format", "bits", "max", "min normal", "min subnormal", "NaN", "Inf"]:
        t.add_column(col, justify="left" if col == "format" else "right")
    for r in format_rows():
        t.add_row(r["format"], str(r["bits"]), _num(r["max"]), _num(r["min_normal"]),
                  _num(r["min_subnormal"]), "yes" if r["nan"] else "-", "yes" if r["inf"] else "-")
    console.print(t)

    x = demo_tensor(args.rows, args.cols, args.seed)
    t = Table(title=f"Quantization error on a {args.rows}x{args.cols} weight-like tensor "
                    f"(seed {args.seed}; Gaussian rows, scales over 2 decades, outliers x8)")
    for col in ["scheme", "SQNR (dB)", "max |error|", "bits / element"]:
        t.add_column(col, justify="left" if col == "scheme" else "right")
    for r in scheme_error_rows(x, args.schemes):
        t.add_row(r["scheme"], f"{r['sqnr_db']:.2f}", f"{r['max_abs_err']:.4g}",
                  f"{r['bits_per_elem']:.2f}")
    console.print(t)
    console.print("Next: [bold]lowbit quantize[/] quantizes the bundled MiniLM model; "
                  "schemes are written as in the first column (e.g. int4:g128:asym).")
    return 0
