"""The main job: quantize a bundled (or local) encoder with a recipe and measure the cost.

``quantize_job`` is what ``lowbit quantize`` and ``make demo`` run: FP32 reference
embeddings, calibration, quantization, quality against FP32 (cosine, recall@10), model
bytes, latency at batch 32 x 32 tokens and batch 1 (FP32 timed in the same process,
interleaved with the quantized model so both see the same machine state), and the save.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import save_quantized
from ..ptq import quantize_model
from ..recipes import Recipe
from . import get_model
from .data import sentences
from .metrics import compare, model_bytes

__all__ = ["JobResult", "layer_summary", "quantize_job"]


@dataclass
class JobResult:
    model: str
    recipe: str
    n_eval: int
    n_calib: int
    fp32_bytes: int
    quant_bytes: int
    quality: dict
    latency_s: dict  # {"fp32_b32", "quant_b32", "fp32_b1", "quant_b1"}: median seconds
    layers: list = field(default_factory=list)  # [(kind, scheme, backend, count)]
    saved_to: str | None = None
    seconds: float = 0.0

    @property
    def speedup_b32(self) -> float:
        return self.latency_s["fp32_b32"] / self.latency_s["quant_b32"]

    @property
    def speedup_b1(self) -> float:
        return self.latency_s["fp32_b1"] / self.latency_s["quant_b1"]


def layer_summary(model: torch.nn.Module) -> list[tuple[str, str, str, int]]:
    """(module kind, weight scheme or dtype, backend, count) for every converted module."""
    rows = Counter()
    for module in model.modules():
        kind = getattr(type(module), "lowbit_kind", None)
        if kind is None:
            continue
        wq = getattr(module, "weight_q", None)
        what = str(wq.scheme) if wq is not None else getattr(module, "dtype_name", "")
        act = getattr(module, "act", None)
        if act is not None:
            what += f" / act {act}"
        rows[(type(module).__name__, what, module.backend)] += 1
    return [(*k, n) for k, n in rows.items()]


def _interleaved_latency(enc, fp32, quant, repeats: int) -> dict:
    out = {}
    for bs in (32, 1):
        a, b = [], []
        for _ in range(3):  # alternate the two models so drift hits both
            a.append(enc.latency(fp32, batch_size=bs, seq_len=32, repeats=repeats))
            b.append(enc.latency(quant, batch_size=bs, seq_len=32, repeats=repeats))
        out[f"fp32_b{bs}"], out[f"quant_b{bs}"] = sorted(a)[1], sorted(b)[1]
    return out


@dataclass
class Reference:
    """The FP32 side of a comparison, computed once: the encoder, the evaluation and
    calibration sentences, and the FP32 embeddings of the evaluation sentences."""

    encoder: object
    eval_text: list
    calib_text: list
    embeddings: torch.Tensor

    @classmethod
    def build(cls, model: str = "minilm", calib: int = 256, n_eval: int = 1000) -> Reference:
        enc = get_model(model)
        eval_text = sentences("eval", n_eval)
        calib_text = sentences("calib", calib) if calib else []
        return cls(enc, eval_text, calib_text, enc.embed(eval_text))


def run_recipe(ref: Reference, recipe, out: str | Path | None = None, progress: bool = True,
               latency_repeats: int = 10) -> JobResult:
    """Quantize a copy of ``ref``'s model with ``recipe`` and measure it against FP32."""
    t0 = time.perf_counter()
    recipe = Recipe.resolve(recipe)
    enc, fp32 = ref.encoder, ref.encoder.model
    quant = copy.deepcopy(fp32)
    calib = enc.batches(ref.calib_text) if ref.calib_text else None
    quantize_model(quant, recipe, calib_data=calib, progress=progress)
    quality = compare(ref.embeddings, enc.embed(ref.eval_text, model=quant))
    latency = _interleaved_latency(enc, fp32, quant, latency_repeats)
    saved = None
    if out is not None:
        save_quantized(quant, out, recipe=recipe)
        saved = str(out)
    return JobResult(enc.name, recipe.name, len(ref.eval_text), len(ref.calib_text),
                     model_bytes(fp32), model_bytes(quant), quality, latency,
                     layer_summary(quant), saved, time.perf_counter() - t0)


def quantize_job(model: str = "minilm", recipe="a8w4", calib: int = 256, n_eval: int = 1000,
                 out: str | Path | None = None, progress: bool = True,
                 latency_repeats: int = 10) -> JobResult:
    """Quantize ``model`` with ``recipe`` and measure it against FP32 (see module doc)."""
    t0 = time.perf_counter()
    result = run_recipe(Reference.build(model, calib, n_eval), recipe, out, progress,
                        latency_repeats)
    result.seconds = time.perf_counter() - t0
    return result
