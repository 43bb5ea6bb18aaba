"""The whole-model driver: plan with a recipe, calibrate, build quantized modules, swap.

``quantize_model`` never leaves a half-converted model: every replacement module is built
first (calibration only observes, through hooks that are always removed), and the swap
into the model happens at the end, when nothing can fail any more.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import calib
from ..nn import KeepPrecision, quantized_class
from ..recipes import Recipe

__all__ = ["quantize_model", "make_observer", "run_batches"]

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


def _observe_input(observer):
    def hook(module, args):
        observer.update(args[0].detach())  # returns None: the input passes unchanged

    return hook


def _calibrate(model, plan, calib_data, progress: Progress) -> dict:
    """Observers for every static-activation module, fed with that module's inputs."""
    static = {n: r for n, r in plan.items() if r.act is not None and r.act_mode == "static"}
    if not static:
        return {}
    if calib_data is None:
        raise ValueError(f"{len(static)} modules have static activations "
                         f"(e.g. {next(iter(static))}); pass calib_data=batches to calibrate "
                         "them, or use a dynamic activation scheme")
    batches = list(calib_data)
    if not batches:
        raise ValueError("calib_data is empty: give at least one batch")
    modules = dict(model.named_modules())
    observers = {n: make_observer(r.observer) for n, r in static.items()}
    handles = []
    try:
        for name, obs in observers.items():
            handles.append(modules[name].register_forward_pre_hook(_observe_input(obs)))
        was_training = model.training
        model.eval()
        task = progress.add_task("calibrating", total=len(batches))
        try:
            run_batches(model, batches, progress, task)
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return observers


def _build(name, module, rule, observers):
    if rule.keep is not None:
        return None if rule.keep == "fp32" else KeepPrecision(copy.deepcopy(module), rule.keep)
    cls = quantized_class(module)
    if cls is None:
        raise ValueError(f"module {name!r} ({type(module).__name__}) has no quantized version; "
                         "narrow the recipe rule's types (e.g. types=['Linear']) or keep it")
    if rule.weight is None:
        raise ValueError(f"rule for {name!r} quantizes activations only; lowbit's quantized "
                         "modules need a weight scheme too (add weight=...)")
    weight_qparams = None
    if rule.weight_clip == "mse":
        w = module.weight.detach()
        if w.dim() > 2:
            w = w.reshape(w.shape[0], -1)
        weight_qparams = calib.mse_search(w, rule.weight)
    act_qparams = observers[name].qparams(rule.act) if name in observers else None
    return cls.from_float(module, rule.weight, rule.act, weight_qparams=weight_qparams,
                          act_qparams=act_qparams)


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
        observers = _calibrate(model, plan, calib_data, bar)
        task = bar.add_task("quantizing", total=len(plan))
        replacements = {}
        modules = dict(model.named_modules())
        for name, rule in plan.items():
            new = _build(name, modules[name], rule, observers)
            if new is not None:
                replacements[name] = new
            bar.advance(task)
    for name, new in replacements.items():  # nothing below can raise: swap everything
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    model.lowbit_recipe = recipe
    return model


