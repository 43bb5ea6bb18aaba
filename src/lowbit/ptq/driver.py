"""The whole-model driver: plan with a recipe, calibrate, build quantized modules, swap.

``quantize_model`` never leaves a half-converted model: every replacement module is built
first (calibration only observes, through hooks that are always removed), and the swap
into the model happens at the end, when nothing can fail any more.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import calib
from ..nn import KeepPrecision, quantized_class
from ..recipes import Recipe
from .gptq import Hessian, gptq

__all__ = ["make_observer", "quantize_model", "run_batches", "smooth_scales"]

_OBSERVERS = {
    "minmax": lambda: calib.MinMax(),
    "moving_average": lambda: calib.MovingAverage(),
    "percentile": lambda: calib.Percentile(),
    "entropy": lambda: calib.Histogram(method="entropy"),
    "mse": lambda: calib.Histogram(method="mse"),
}


def make_observer(name: str):
    """A fresh observer for a recipe's observer name."""
    try:
        return _OBSERVERS[name]()
    except KeyError:
        raise ValueError(f"unknown observer {name!r}; one of {', '.join(_OBSERVERS)}") from None


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled, transient=False)


def run_batches(model: torch.nn.Module, batches: Iterable, progress=None, task=None) -> None:
    """Run ``model`` on each batch (a tensor, a tuple of positional args, or a dict of
    keyword args) without gradients, advancing ``progress`` by one per batch."""
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
            if progress is not None:
                progress.advance(task)


def _observe_input(observer, divisor=None):
    mul = None if divisor is None else 1 / divisor.float()  # what the kernels multiply by

    def hook(module, args):
        x = args[0].detach()
        observer.update(x if mul is None else x * mul)  # the input passes unchanged

    return hook


def _observe(model, batches, observers: dict, divisors: dict, progress, label: str) -> None:
    """One calibration pass: each observer sees its module's inputs (divided by the
    module's SmoothQuant scale, if any). Hooks are always removed."""
    modules = dict(model.named_modules())
    handles = []
    was_training = model.training
    try:
        for key, obs in observers.items():
            name = key.split("#")[0]  # "layer#hessian": a second observer on the same input
            hook = _observe_input(obs, divisors.get(name))
            handles.append(modules[name].register_forward_pre_hook(hook))
        model.eval()
        run_batches(model, batches, progress, progress.add_task(label, total=len(batches)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _needs_data(calib_data, what: str, example: str) -> list:
    if calib_data is None:
        raise ValueError(f"{what} (e.g. {example}); pass calib_data=batches to calibrate them, "
                         "or use a dynamic activation scheme without smoothing")
    batches = list(calib_data)
    if not batches:
        raise ValueError("calib_data is empty: give at least one batch")
    return batches


def smooth_scales(x_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel scale s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
    (Xiao et al., 2023); channels with no signal get 1."""
    w_amax = weight.detach().abs().amax(0).float()
    s = x_amax.float().clamp(min=1e-5) ** alpha / w_amax.clamp(min=1e-5) ** (1 - alpha)
    return torch.where((x_amax > 0) & (w_amax > 0), s, torch.ones_like(s)).clamp(min=1e-5)


def _calibrate(model, plan, calib_data, progress: Progress) -> tuple[dict, dict]:
    """(observers, SmoothQuant scales) from the calibration data. Observers are keyed by
    layer name (static activation ranges) and ``name#hessian`` (GPTQ's input Hessians).

    With smoothing, a first pass measures each smoothed Linear's per-input-channel ranges;
    the observers then see the smoothed inputs x / s in a second pass.
    """
    modules = dict(model.named_modules())
    smooth = {n: r for n, r in plan.items()
              if r.smooth is not None and isinstance(modules[n], torch.nn.Linear)}
    static = [n for n, r in plan.items() if r.act is not None and r.act_mode == "static"]
    gptq_layers = [n for n, r in plan.items() if r.weight_clip in ("gptq", "gptq_mse")]
    if calib_data is None and not static and (smooth or gptq_layers):
        warnings.warn(f"SmoothQuant ({len(smooth)} layers) and GPTQ ({len(gptq_layers)} "
                      "layers) skipped: they measure the layers' inputs on calibration data "
                      "(GPTQ layers get their plain clip instead); pass calib_data=batches "
                      "to apply them", UserWarning, stacklevel=3)
        return {}, {}
    if not smooth and not static and not gptq_layers:
        return {}, {}
    what = (f"{len(static)} modules have static activations, {len(gptq_layers)} use GPTQ "
            f"and {len(smooth)} are smoothed")
    batches = _needs_data(calib_data, what, next(iter([*static, *gptq_layers, *smooth])))
    scales = {}
    if smooth:
        ranges = {n: calib.MinMax(axis=-1) for n in smooth}
        _observe(model, batches, ranges, {}, progress, "measuring channels")
        for n, obs in ranges.items():
            lo, hi = obs.range()
            scales[n] = smooth_scales(torch.maximum(-lo, hi), modules[n].weight, smooth[n].smooth)
    observers = {n: make_observer(plan[n].observer) for n in static}
    observers.update({f"{n}#hessian": Hessian() for n in gptq_layers})
    if observers:
        _observe(model, batches, observers, scales, progress, "calibrating")
    return observers, scales


def _build(name, module, rule, observers, scales):
    if rule.keep is not None:
        return None if rule.keep == "fp32" else KeepPrecision(copy.deepcopy(module), rule.keep)
    cls = quantized_class(module)
    if cls is None:
        raise ValueError(f"module {name!r} ({type(module).__name__}) has no quantized version; "
                         "narrow the recipe rule's types (e.g. types=['Linear']) or keep it")
    if rule.weight is None:
        raise ValueError(f"rule for {name!r} quantizes activations only; lowbit's quantized "
                         "modules need a weight scheme too (add weight=...)")
    extra = {"input_scale": scales[name]} if name in scales else {}
    weight_qparams = None
    w = module.weight.detach().reshape(module.weight.shape[0], -1)
    if name in scales:
        w = w * scales[name]
    if rule.weight_clip == "mse":
        weight_qparams = calib.mse_search(w, rule.weight)
    elif rule.weight_clip == "gptq_mse" and f"{name}#hessian" not in observers:
        weight_qparams = calib.mse_search(w, rule.weight)  # no calibration data: no GPTQ
    elif rule.weight_clip in ("gptq", "gptq_mse") and f"{name}#hessian" in observers:
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"GPTQ applies to Linear layers; {name!r} is "
                             f"{type(module).__name__}")
        clip = "mse" if rule.weight_clip == "gptq_mse" else "minmax"
        w_q, weight_qparams = gptq(w, observers[f"{name}#hessian"].value(), rule.weight,
                                   clip=clip)
        # from_float quantizes module.weight (times the smoothing scale) with these qparams:
        # w_q is on their grid, so the codes are GPTQ's (rounding absorbs the ulp that
        # dividing and re-multiplying by a smoothing scale may add).
        module = copy.deepcopy(module)  # the model's own layer is never touched
        module.weight.data = w_q / scales[name] if name in scales else w_q
    act_qparams = observers[name].qparams(rule.act) if name in observers else None
    return cls.from_float(module, rule.weight, rule.act, weight_qparams=weight_qparams,
                          act_qparams=act_qparams, **extra)


def quantize_model(model: torch.nn.Module, recipe, calib_data=None, progress: bool = True):
    """Quantize ``model`` in place following ``recipe``; returns the model.

    Args:
        model: a float model (eval mode recommended).
        recipe: a ``Recipe``, a preset name (``"a8w4"``) or a recipe file path.
        calib_data: iterable of batches (tensor, tuple of args, or dict of kwargs) run
            through the model to calibrate static activation ranges.
        progress: show progress bars.

    If anything fails, the model is left exactly as it was.
    """
    recipe = Recipe.resolve(recipe)
    plan = recipe.validate(model)
    with _progress(progress) as bar:
        observers, scales = _calibrate(model, plan, calib_data, bar)
        task = bar.add_task("quantizing", total=len(plan))
        replacements = {}
        modules = dict(model.named_modules())
        for name, rule in plan.items():
            new = _build(name, modules[name], rule, observers, scales)
            if new is not None:
                replacements[name] = new
            bar.advance(task)
    for name, new in replacements.items():  # nothing below can raise: swap everything
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    model.lowbit_recipe = recipe
    return model


