"""How the analysis tools run a model: batches in, the main output tensor out, and which
modules are lowbit's quantized layers.

A batch is a dict (keyword arguments, e.g. a tokenizer's output), a tuple/list (positional
arguments) or a tensor, as everywhere in lowbit (``lowbit.ptq.run_batches``).
"""

from __future__ import annotations

import torch

from ..nn import KeepPrecision, QuantConv2d, QuantEmbedding, QuantLinear

__all__ = ["QUANT_TYPES", "call_model", "first_tensor", "quantized_layers", "real_positions"]

QUANT_TYPES = (QuantLinear, QuantConv2d, QuantEmbedding, KeepPrecision)


def call_model(model, batch):
    """Run ``model`` on a batch: a dict (kwargs), a tuple/list (args) or a tensor."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(out) -> torch.Tensor:
    """The main output tensor of a model's output (tensor, tuple, or ``ModelOutput``)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, dict):
        return next(v for v in out.values() if torch.is_tensor(v))
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")


def real_positions(out: torch.Tensor, batch) -> torch.Tensor:
    """``out`` without padding: rows where the batch's ``attention_mask`` is 1 when the
    batch is a dict holding one shaped like ``out``'s first two axes (token models)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if torch.is_tensor(mask) and out.dim() >= 2 and tuple(out.shape[:2]) == tuple(mask.shape):
        return out[mask.bool()]
    return out


def quantized_layers(model) -> dict[str, torch.nn.Module]:
    """``{name: module}`` of every lowbit quantized module in ``model`` (not inside one)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QUANT_TYPES) and not any(name.startswith(p + ".") for p in out):
            out[name] = mod
    return out
