"""Dynamic precision for whole models: choose each layer's input precision at run time.

The seed's ``DynamicQuantizationEngine``: before each Linear / Conv2d / norm / softmax
runs, ``select_precision`` looks at its input and the input is rounded to the chosen
precision (simulated in fp32, so any model runs):

=============  ============================================================
``int8``       ``lb.fake_quantize(x, "int8:token")`` (one scale per row of the last
               axis; a conv input per tensor)
``fp8_e4m3fn`` ``lb.fake_quantize(x, "fp8_e4m3fn")`` (per-tensor scale, amax -> 448)
``fp16``/bf16  a round trip through the dtype
``fp32``       unchanged
=============  ============================================================

>>> with DynamicPrecision(model) as dp:
...     model(x)
>>> print(dp.format_report())          # per layer: what was chosen, how often, and why
"""

from __future__ import annotations

from collections import Counter

import torch

from ..quant import fake_quantize
from .select import Choice, select_precision

__all__ = ["LAYER_OPS", "DynamicPrecision", "apply_precision"]

# module class name -> op given to the selector
LAYER_OPS = {"Linear": "linear", "Conv1d": "conv", "Conv2d": "conv", "LayerNorm": "norm",
             "GroupNorm": "norm", "BatchNorm1d": "norm", "BatchNorm2d": "norm",
             "RMSNorm": "norm", "Softmax": "softmax", "LogSoftmax": "softmax"}


def apply_precision(x: torch.Tensor, precision: str, op: str = "linear") -> torch.Tensor:
    """``x`` rounded to ``precision`` (see the table above), in x's dtype."""
    if precision == "fp32":
        return x
    if precision == "int8":
        scheme = "int8" if op == "conv" or x.dim() < 2 else "int8:token"
        return fake_quantize(x, scheme)
    if precision == "fp8_e4m3fn":
        return fake_quantize(x, "fp8_e4m3fn")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        raise ValueError(f"precision must be fp32, bf16, fp16, fp8_e4m3fn or int8; got "
                         f"{precision!r}")
    return x.to(dtype).to(x.dtype)


def _op_of(module) -> str | None:
    for c in type(module).__mro__:
        if c.__name__ in LAYER_OPS:
            return LAYER_OPS[c.__name__]
    return None


class DynamicPrecision:
    """Forward pre-hooks choosing and applying each layer's input precision per call.

    Args:
        model: any ``nn.Module``; layers whose class is in ``LAYER_OPS`` are hooked.
        apply: round the inputs (True) or only record what would be chosen (False).

    Use as a context manager (hooks removed on exit) or call ``remove()``.
    """

    def __init__(self, model: torch.nn.Module, apply: bool = True):
        self.apply = apply
        self.counts: dict[str, Counter] = {}
        self.last: dict[str, Choice] = {}
        self._ops: dict[str, str] = {}
        self._hooks = []
        for name, mod in model.named_modules():
            op = _op_of(mod)
            if op is not None:
                self._ops[name] = op
                self.counts[name] = Counter()
                self._hooks.append(mod.register_forward_pre_hook(self._hook(name, op)))
        if not self._hooks:
            raise ValueError(f"model has no layer of a known type ({', '.join(LAYER_OPS)})")

    def _hook(self, name: str, op: str):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) \
                    or not args[0].is_floating_point():
                return None
            choice = select_precision(args[0], op)
            self.counts[name][choice.precision] += 1
            self.last[name] = choice
            if not self.apply:
                return None
            return (apply_precision(args[0], choice.precision, op), *args[1:])
        return hook

    def report(self) -> list[dict]:
        """One row per hooked layer that ran: name, op, counts per precision, last reason."""
        return [{"layer": n, "op": self._ops[n], "chosen": dict(self.counts[n]),
                 "last": self.last[n].precision, "reason": self.last[n].reason}
                for n in self._ops if self.counts[n]]

    def format_report(self) -> str:
        rows = self.report()
        width = max([len(r["layer"]) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'op':<7} {'chosen (calls)':<28} reason (last call)"]
        for r in rows:
            chosen = ", ".join(f"{k} x{v}" for k, v in sorted(r["chosen"].items()))
            lines.append(f"{r['layer']:<{width}}  {r['op']:<7} {chosen:<28} {r['reason']}")
        return "\n".join(lines)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> DynamicPrecision:  # noqa: PYI034 (not subclassed)
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
