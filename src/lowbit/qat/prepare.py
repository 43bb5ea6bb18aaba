"""``prepare`` a float model for quantization-aware training, and ``convert`` it afterwards.

>>> model = lb.qat.prepare(model, recipe, ranges="lsq")   # in place; returns the model
>>> train(model)                                          # optimizer built *after* prepare
>>> qmodel = lb.qat.convert(model)                        # lowbit.nn.QuantLinear / QuantConv2d

Per-layer configuration is the recipe's: each module a rule matches gets that rule's weight
and activation schemes; ``keep`` rules and unmatched modules stay float. Only ``Linear``
and ``Conv2d`` (groups=1) can be trained with fake quantization.

Where the quantization parameters come from (see ``FakeQuant``):

==========================  =========================  ==================================
role, scheme                ``ranges="ema"``           ``ranges="lsq"``
==========================  =========================  ==================================
weight, plain scheme        the weight's own min-max   learned step per scale block
                            (or MSE clip if the rule
                            says ``weight_clip="mse"``)
activation, per-tensor      moving average of batch    learned per-tensor step
                            min/max (``momentum``)
per-token / MX / NVFP4      from each input (dynamic)  from each input (dynamic)
==========================  =========================  ==================================

What ``convert`` preserves: the real modules are built with exactly the qparams the fake
quantizers use (``FakeQuant.qparams``), so the stored weight codes equal the codes of the
fake-quantized weight, and the activation codes the kernel computes equal those of the
fake-quantized input, bit for bit. Outputs differ only by float32 accumulation: the fake
path sums ``x_hat * w_hat`` products in float32, an integer kernel sums ``qx * qw`` exactly
and scales once, so per output ``|y_real - y_fake| <= (K + 4) * 2**-24 * sum_k |x_hat_k *
w_hat_k| + 2**-24 * |b|`` (K the reduction length; the standard bound on a float32 sum of
K products, plus the final scaling and bias rounding). Asymmetric activations add their
zero-point correction inside the same bound.
"""

from __future__ import annotations

import copy

import torch

from ..quant import QParams, Scheme
from ..recipes import Recipe
from .fake_quant import FakeQuant
from .modules import QAT_MODULES, QATConv2d, QATLinear

__all__ = ["RANGES", "convert", "prepare", "qat_modules"]

RANGES = ("ema", "lsq")


def _resolve(recipe):
    return recipe if hasattr(recipe, "plan") else Recipe.resolve(recipe)


def _qat_class(module) -> type | None:
    for t in type(module).__mro__:
        if t in QAT_MODULES:
            return QAT_MODULES[t]
    return None


def _is_static(scheme: Scheme) -> bool:
    return not (scheme.is_dynamic or scheme.is_block_scaled)


def _weight_fq(rule, module, ranges: str) -> FakeQuant | None:
    s = rule.weight
    if s is None:
        return None
    shape = (module.weight.shape[0], module.weight[0].numel())  # the GEMM form [out, red]
    if ranges == "lsq" and _is_static(s):
        return FakeQuant(s, "lsq", shape=shape)
    clip = getattr(rule, "weight_clip", None) or "minmax"
    return FakeQuant(s, "tensor", clip=clip if _is_static(s) else "minmax")


def _act_fq(rule, ranges: str, momentum: float) -> FakeQuant | None:
    s = getattr(rule, "act", None)
    if s is None:
        return None
    if not _is_static(s):
        return FakeQuant(s, "tensor")
    return FakeQuant(s, "lsq") if ranges == "lsq" else FakeQuant(s, "ema", momentum=momentum)


def _set(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare(model: torch.nn.Module, recipe, *, ranges: str = "ema", momentum: float = 0.9,
            inplace: bool = True) -> torch.nn.Module:
    """Swap every Linear/Conv2d a recipe rule quantizes for a QAT module.

    Args:
        model: a float model (not already prepared).
        recipe: a ``lowbit.recipes.Recipe``, a preset name or a recipe file path (anything
            with ``plan(model) -> {name: rule}`` whose rules have ``weight``/``act``
            Schemes and ``keep``).
        ranges: ``"ema"`` (tracked ranges) or ``"lsq"`` (learned steps); see the table in
            the module docstring.
        momentum: of the activations' moving average (``ranges="ema"``).
        inplace: modify ``model`` (default) or a deep copy.
    Returns:
        The prepared model. Build the optimizer after ``prepare``: LSQ adds parameters.
    """
    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {', '.join(RANGES)}; got {ranges!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
    if qat_modules(model):
        raise ValueError("model is already prepared for QAT (it holds QAT modules)")
    recipe = _resolve(recipe)
    model = model if inplace else copy.deepcopy(model)
    for name, rule in recipe.plan(model).items():
        if getattr(rule, "keep", None) is not None:
            continue
        module = model.get_submodule(name)
        cls = _qat_class(module)
        if cls is None:
            raise ValueError(f"module {name!r} ({type(module).__name__}) matches a quantizing "
                             "rule, but QAT supports Linear and Conv2d only; add a keep rule "
                             "for it or narrow the rule's types")
        if rule.weight is None:
            raise ValueError(f"module {name!r}: the rule quantizes activations only; QAT "
                             "(and convert) need a weight scheme")
        new = cls.from_float(module, _weight_fq(rule, module, ranges),
                             _act_fq(rule, ranges, momentum))
        _set(model, name, new)
    return model


def qat_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{qualified name: module}`` of the QAT modules in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QATLinear, QATConv2d))}


def _act_qparams(fq: FakeQuant | None) -> QParams | None:
    if fq is None:
        return None
    qp = fq.qparams()
    if qp is None:
        return None
    return QParams(qp.scale.reshape(1, 1), None if qp.zero_point is None
                   else qp.zero_point.reshape(1, 1))


@torch.no_grad()
def convert(model: torch.nn.Module, *, inplace: bool = True) -> torch.nn.Module:
    """Replace each QAT module by the real quantized module (``lowbit.nn``).

    ``QATLinear`` -> ``QuantLinear``, ``QATConv2d`` -> ``QuantConv2d``, built with the
    fake quantizers' exact qparams (see the module docstring for what is exact). The
    model is put in eval mode. Static activation ranges must have seen data.
    """
    from ..nn import QuantConv2d, QuantLinear  # nn sits above qat; imported when used

    model = model if inplace else copy.deepcopy(model)
    targets = qat_modules(model)
    if not targets:
        raise ValueError("model holds no QAT modules; call lowbit.qat.prepare first")
    for name, m in targets.items():
        w2 = m.weight.detach().reshape(m.weight.shape[0], -1)
        wqp = m.weight_fq.qparams(w2)
        act = None if m.act_fq is None else m.act_fq.scheme
        real = QuantLinear if isinstance(m, QATLinear) else QuantConv2d
        new = real.from_float(m.to_float(), weight=m.weight_fq.scheme, act=act,
                              weight_qparams=wqp, act_qparams=_act_qparams(m.act_fq))
        _set(model, name, new)
    return model.eval()
