"""What to do about a layer that lost too much: a concrete, measured fix.

The debug report splits each layer's output noise into the part its quantized weight
makes (``weight-only`` output: float input times the dequantized weight) and the rest,
which its activation quantization makes. Noise powers add, so with output signal power
``P`` and SQNRs in dB::

    N_total = P / 10^(sqnr_out / 10)      N_w = P / 10^(sqnr_w_only / 10)
    N_act = max(N_total - N_w, 0)

Example: out 17 dB, weight-only 18 dB -> N_total = 0.020 P, N_w = 0.016 P, N_act = 0.004 P:
the weight dominates.

* Weight-dominated: candidate weight schemes, each one step finer than the current one
  (per-tensor -> per-channel -> groups of 128 / 64 / 32, asymmetric, MSE clipping, 8 bits,
  a finer block format), are quantized on the real weight; output weight noise is assumed
  to scale with the weight's own noise, ``N_w' = N_w * 10^((sqnr_w - sqnr_w') / 10)``,
  and the smallest candidate (in bytes) whose predicted output SQNR reaches the target
  wins. None reaching it: keep the layer in fp16.
* Activation-dominated: static per-tensor ranges that clip channels -> dynamic per-token
  activations; a few channels far above the rest (channel amax max/median above
  ``SMOOTH_RATIO``) -> SmoothQuant-style scaling (``smooth = 0.5``), or weight-only (``act``
  dropped) when the layer is smoothed already; block-scaled 4-bit activations -> 8-bit
  blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from glob import escape

import torch

from ..calib import mse_search
from ..formats import FloatFormat, IntFormat
from ..quant import PerChannel, PerGroup, PerTensor, Scheme, quantize

__all__ = ["SMOOTH_RATIO", "Fix", "suggest_fix", "weight_candidates"]

SMOOTH_RATIO = 20.0   # channel amax: max / median above this = outlier channels
_MSE_LIMIT = 4_000_000  # MSE clip search only on weights up to this many elements


@dataclass
class Fix:
    """A suggested change for one layer: ``text`` for people, ``rule`` (a recipe-rule
    table without ``pattern``: ``{"weight": "int4:g64"}``, ``{"keep": "fp16"}``) for
    ``lowbit.recipes.Rule``, and the predicted output SQNR (dB) where it was measured."""

    text: str
    rule: dict = field(default_factory=dict)
    predicted_sqnr_db: float | None = None


def weight_candidates(scheme: Scheme, k: int) -> list[tuple[Scheme, str]]:
    """Finer weight schemes than ``scheme`` for a reduction axis of ``k``: (scheme, clip)."""
    fmt, g = scheme.format, scheme.granularity
    out: list[tuple[Scheme, str]] = []
    if scheme.is_block_scaled:
        names = {"mxfp4": ["nvfp4", "mxfp6_e2m3", "mxfp8"], "nvfp4": ["mxfp6_e2m3", "mxfp8"],
                 "mx4": ["mx6", "mx9"], "mx6": ["mx9", "mxfp8"]}.get(str(scheme).split(":")[0],
                                                                  ["mxfp8"])
        return [(Scheme.parse(n), "minmax") for n in names]
    grans = []
    if isinstance(g, PerTensor):
        grans.append(PerChannel(0))
    if isinstance(g, (PerTensor, PerChannel)) and fmt.bits <= 4:
        grans += [PerGroup(n) for n in (128, 64, 32) if k % n == 0 and n < k]
    if isinstance(g, PerGroup):
        grans += [PerGroup(n) for n in (64, 32) if n < g.size and k % n == 0]
    for gr in [g] + grans:
        base = scheme.with_(granularity=gr)
        if gr != g:
            out.append((base, "minmax"))
        if isinstance(fmt, IntFormat) and scheme.symmetric:
            out.append((base.with_(symmetric=False), "minmax"))
        out.append((base, "mse"))
    if fmt.bits < 8:
        wide = "int8:channel" if isinstance(fmt, IntFormat) else "fp8_e4m3fn:channel"
        out.append((Scheme.parse(wide), "minmax"))
    elif isinstance(fmt, FloatFormat) and isinstance(g, PerTensor):
        out.append((Scheme.parse("int8:channel"), "minmax"))
    return out


def _measure(w: torch.Tensor, scheme: Scheme, clip: str) -> tuple[float, int]:
    """(weight SQNR in dB, stored bytes) of ``w`` under ``scheme`` with ``clip``."""
    qp = mse_search(w, scheme) if clip == "mse" else None
    q = quantize(w, scheme, qp)
    err = (w.double() - q.dequantize().double()).pow(2).sum()
    sig = w.double().pow(2).sum()
    return (float("inf") if err == 0 else float(10 * torch.log10(sig / err))), q.nbytes


def _db(p: float) -> float:
    return 10 * math.log10(p) if p > 0 else float("inf")


def suggest_fix(*, w2d: torch.Tensor | None, weight: Scheme | None, weight_clip: str | None,
                act: Scheme | None, act_mode: str | None, sqnr_out: float,
                sqnr_w_only: float | None, sqnr_weight: float | None, target_db: float,
                act_saturated: int, act_channel_ratio: float | None,
                smoothed: bool = False) -> Fix:
    """The cheapest measured fix that brings the layer's output SQNR to ``target_db``."""
    if not math.isfinite(sqnr_out):
        return Fix("exact: nothing to fix")
    n_tot = 10 ** (-sqnr_out / 10)                 # noise powers relative to the signal
    n_w = 10 ** (-sqnr_w_only / 10) if sqnr_w_only is not None else n_tot
    n_w = min(n_w, n_tot)
    n_act = max(n_tot - n_w, 0.0)
    if act is not None and n_act > n_w:
        share = f"activations make {100 * n_act / n_tot:.0f}% of the output noise"
        if act_mode == "static" and act_saturated:
            return Fix(f"{share} and static ranges clip {act_saturated} channels: use "
                       "dynamic per-token activations (act int8:token)",
                       {"act": "int8:token", "act_mode": "dynamic"}, _db(1 / n_w))
        if act_channel_ratio is not None and act_channel_ratio > SMOOTH_RATIO:
            if not smoothed and weight is not None:
                return Fix(f"{share}; a few input channels reach {act_channel_ratio:.0f}x the "
                           "median channel: SmoothQuant-style scaling (migrate the "
                           "activation outliers into the weight, smooth 0.5)",
                           {"smooth": 0.5}, None)
            return Fix(f"{share}; input channels still reach {act_channel_ratio:.0f}x the "
                       "median channel after smoothing: keep activations in float "
                       "(weight-only, drop act)", {"act": None}, _db(1 / n_w))
        if act.is_block_scaled and act.bits <= 4:
            return Fix(f"{share}: 8-bit activation blocks (act mxfp8)", {"act": "mxfp8"}, None)
        if act_mode == "static":
            return Fix(f"{share}: dynamic per-token activations (act int8:token)",
                       {"act": "int8:token", "act_mode": "dynamic"}, None)
        return Fix(f"{share}: keep activations in float (weight-only, drop act)",
                   {"act": None}, _db(1 / n_w))
    if w2d is None or weight is None or sqnr_weight is None:
        return Fix("keep in higher precision (fp16)", {"keep": "fp16"}, None)
    best = None
    for cand, clip in weight_candidates(weight, w2d.shape[-1]):
        if cand == weight and clip == (weight_clip or "minmax"):
            continue
        if clip == "mse" and w2d.numel() > _MSE_LIMIT:
            continue
        try:
            s, nbytes = _measure(w2d, cand, clip)
        except ValueError:
            continue
        n_w_new = n_w * 10 ** ((sqnr_weight - s) / 10)
        pred = _db(1 / (n_act + n_w_new))
        key = (nbytes, -pred)
        if pred >= target_db and (best is None or key < best[0]):
            best = (key, cand, clip, s, pred)
    if best is None:
        return Fix(f"no finer {weight.bits}-bit or 8-bit weight scheme reaches {target_db:.0f} "
                   "dB: keep in higher precision (fp16)", {"keep": "fp16"}, None)
    _, cand, clip, s, pred = best
    rule = {"weight": str(cand), "weight_clip": clip}
    clip_txt = ", MSE clip" if clip == "mse" else ""
    return Fix(f"weight {weight} -> {cand}{clip_txt} (weight SQNR {sqnr_weight:.1f} -> "
               f"{s:.1f} dB, predicted output {pred:.1f} dB)", rule, pred)


def merged_rule(name: str, rule, change: dict) -> dict:
    """The layer's current rule with ``change`` applied, as a recipe-rule table."""
    if "keep" in change:
        return {"pattern": escape(name), **change}
    base = {} if rule is None else {k: v for k, v in rule.to_dict().items()
                                    if k not in ("pattern", "types")}
    base.update(change)
    if base.get("act") is None:
        for k in ("act", "act_mode", "observer", "smooth"):
            base.pop(k, None)
    return {"pattern": escape(name), **base}
