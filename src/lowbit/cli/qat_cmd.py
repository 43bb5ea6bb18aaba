"""``lowbit qat --demo digits``: FP32 vs post-training vs quantization-aware training."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

DEMOS = ("digits",)


def add_parser(sub) -> None:
    p = sub.add_parser("qat", help="quantization-aware training demo (PTQ vs QAT table)")
    p.add_argument("--demo", choices=DEMOS, default="digits",
                   help="the demo to run: digits (scikit-learn's 8x8 digits, a small CNN)")
    p.add_argument("--epochs", type=int, default=20, help="FP32 training epochs")
    p.add_argument("--qat-epochs", type=int, default=3, help="QAT fine-tuning epochs per scheme")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..models.digits import DigitsCNN, accuracy, load_digits_data, ptq_qat_rows, train_digits

    if args.epochs < 1 or args.qat_epochs < 0:
        raise ValueError("--epochs must be >= 1 and --qat-epochs >= 0")
    torch.set_num_threads(args.threads)
    console = Console()
    t0 = time.perf_counter()
    data = load_digits_data(seed=args.seed)
    model = train_digits(DigitsCNN(seed=args.seed), data, epochs=args.epochs, seed=args.seed)
    fp32 = accuracy(model, data.test_x, data.test_y)
    rows = ptq_qat_rows(model, data, qat_epochs=args.qat_epochs, seed=args.seed)
    seconds = time.perf_counter() - t0

    t = Table(title=f"digits: test accuracy (%) on {len(data.test_y)} held-out images; "
                    f"FP32 {fp32:.2f}")
    for col in ["scheme", "weights", "acts", "PTQ", "QAT", "PTQ-FP32", "QAT-FP32"]:
        t.add_column(col, justify="left" if col in ("scheme", "weights", "acts") else "right",
                     no_wrap=True)
    t.add_row("fp32", "-", "-", f"{fp32:.2f}", f"{fp32:.2f}", "0.00", "0.00")
    for r in rows:
        t.add_row(r["scheme"], r["weight"], r["act"], f"{r['ptq']:.2f}", f"{r['qat']:.2f}",
                  f"{r['ptq'] - fp32:+.2f}", f"{r['qat'] - fp32:+.2f}")
    console.print(t)
    console.print(f"conv1 and fc2 (first and last layer) stay at int8 weights/acts; conv2 and "
                  f"fc1 take the weights/acts shown. FP32: {args.epochs} epochs; QAT: LSQ steps, "
                  f"{args.qat_epochs} fine-tuning epochs from the FP32 model; PTQ: MSE-clipped "
                  f"weights, moving-average activation ranges. seed {args.seed}, "
                  f"{args.threads} threads, {seconds:.1f} s in all.")
    return 0
