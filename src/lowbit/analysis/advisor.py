"""Strategy advisor: a per-layer plan that meets a size / latency / accuracy constraint.

``recommend(model, data, metric, size_mb=14)`` measures, for every quantizable layer L and
every option o (``OPTIONS``: fp16, int8, int4 in groups, A8W8, A8W4, ...):

* ``drop[L, o]``: metric(float) - metric(float model with only L quantized as o), the same
  swap-in measurement as ``sensitivity``;
* ``bytes[L, o]``: the quantized module's stored bytes (codes, scales, bias);
* ``time[L, o]``: the module's median forward time (s) on ``rows`` input rows, measured
  once per (option, layer shape) with the real kernels.

Drops are assumed to add up (a first-order model, checked afterwards by measuring), so the
plan is a multiple-choice knapsack, solved exactly by dynamic programming over the budgeted
resource (bytes in 4 KiB units, time in microseconds, or drop in 1e-6 metric units):

* size budget: minimize the objective with total bytes <= budget;
* latency budget (no size budget): minimize it with predicted time <= budget;
* accuracy floor only: minimize bytes (``latency`` priority: time) with predicted drop <=
  metric(float) - floor.

The objective is the priority: ``accuracy`` the drop; ``latency`` the time; ``balanced``
drop / (largest drop) + time / (float time) per layer. The plan is then built and measured;
``Plan`` holds predicted and measured size, latency and metric, and the recipe (one rule
per layer) that ``lowbit quantize --recipe FILE`` accepts.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from glob import escape

import numpy as np
import torch

from ..recipes import Recipe, Rule
from .runner import quantized_layers
from .sensitivity import output_cosine, quantized_copy, swap

__all__ = [
    "OPTIONS",
    "PRIORITIES",
    "Plan",
    "measure_options",
    "model_nbytes",
    "recommend",
    "uniform_recipe",
]

PRIORITIES = ("accuracy", "latency", "balanced")

# option name -> rule fields (pattern and types are added per layer); "fp32" = untouched
OPTIONS: dict[str, dict | None] = {
    "fp32": None,
    "fp16": {"keep": "fp16"},
    "w8": {"weight": "int8:channel"},
    "a8w8": {"weight": "int8:channel", "act": "int8:token"},
    "w4g32": {"weight": "int4:g32", "weight_clip": "mse"},
    "w4g64": {"weight": "int4:g64", "weight_clip": "mse"},
    "w4g128": {"weight": "int4:g128", "weight_clip": "mse"},
    "a8w4": {"weight": "int4:g128", "weight_clip": "mse", "act": "int8:token"},
}


def model_nbytes(model: torch.nn.Module) -> int:
    """Stored bytes: lowbit modules' ``.nbytes`` plus every other parameter and buffer."""
    layers = quantized_layers(model)
    total = sum(int(m.nbytes) for m in layers.values())
    for name, mod in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in layers):
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
    return total


def uniform_recipe(option: str, types=("Linear", "Embedding"), options=OPTIONS) -> Recipe:
    """The option applied to every layer of ``types`` (activation schemes on Linear only)."""
    fields_ = options[option]
    if fields_ is None:
        raise ValueError("fp32 leaves the model as it is; there is no recipe to build")
    rules = [Rule(types=("Linear",), **fields_)]
    if "Embedding" in types:
        emb = {k: v for k, v in fields_.items() if k not in ("act",)}
        rules.append(Rule(types=("Embedding",), **emb))
    return Recipe(tuple(rules), name=f"uniform-{option}",
                  description=f"{option} on every {' and '.join(types)} layer")


def _valid(option_fields, module) -> bool:
    is_emb = isinstance(module, torch.nn.Embedding)
    return option_fields is None or not (is_emb and "act" in option_fields)


def _time_module(mod, example, repeats: int = 7) -> float:
    with torch.no_grad():
        mod(example)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mod(example)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _example(module, rows: int):
    if isinstance(module, torch.nn.Embedding):
        return torch.randint(0, module.num_embeddings, (rows,),
                             generator=torch.Generator().manual_seed(0))
    return torch.randn(rows, module.in_features, generator=torch.Generator().manual_seed(0))


def measure_options(model, data, metric, options: dict, layer_types=("Linear", "Embedding"),
                    rows: int = 256, calib_data=None, progress=None) -> dict:
    """``{layer: {option: {"drop", "bytes", "time"}}}`` measured as the module doc says."""
    candidates = {n: m for n, m in model.named_modules()
                  if type(m).__name__ in layer_types and next(m.parameters(False), None)
                  is not None}
    if not candidates:
        raise ValueError(f"the model has no {' or '.join(layer_types)} layers to plan")
    work = copy.deepcopy(model).eval()
    base = metric(work)
    timing: dict = {}
    out = {n: {} for n in candidates}
    for opt, fields_ in options.items():
        if fields_ is None:
            built = {n: candidates[n] for n in candidates}
        else:
            pats = [Rule(pattern=escape(n), **fields_) for n, m in candidates.items()
                    if _valid(fields_, m)]
            if not pats:
                continue
            _, built = quantized_copy(model, Recipe(tuple(pats), name=opt), calib_data or data)
        for name, mod in built.items():
            fmod = candidates[name]
            drop = 0.0
            if fields_ is not None:
                old = swap(work, name, mod)
                drop = base - metric(work)
                swap(work, name, old)
            key = (opt, type(fmod).__name__, tuple(fmod.weight.shape))
            if key not in timing:
                timing[key] = _time_module(mod, _example(fmod, rows))
            nbytes = int(mod.nbytes) if fields_ is not None else sum(
                t.numel() * t.element_size() for t in fmod.state_dict().values())
            out[name][opt] = {"drop": drop, "bytes": nbytes, "time": timing[key]}
            if progress is not None:
                progress(opt, name)
    return {"base": base, "layers": out}


def _knapsack(cost: list[np.ndarray], weight: list[np.ndarray], capacity: int) -> list[int] | None:
    """Pick one item per group minimizing total cost with total integer weight <= capacity.
    Returns the chosen index per group, or None when nothing fits."""
    inf = float("inf")
    dp = np.full(capacity + 1, inf)
    dp[0] = 0.0
    choice = []
    for c, w in zip(cost, weight):
        new = np.full(capacity + 1, inf)
        arg = np.full(capacity + 1, -1, dtype=np.int64)
        for j, (cj, wj) in enumerate(zip(c, w)):
            if wj > capacity:
                continue
            cand = np.full(capacity + 1, inf)
            cand[wj:] = dp[: capacity + 1 - wj] + cj
            better = cand < new
            new[better], arg[better] = cand[better], j
        dp = new
        choice.append(arg)
    if not np.isfinite(dp).any():
        return None
    b = int(np.argmin(dp))
    picks = []
    for g in range(len(cost) - 1, -1, -1):
        j = int(choice[g][b])
        picks.append(j)
        b -= int(weight[g][j])
    return picks[::-1]


@dataclass
class Plan:
    """A per-layer assignment with its predicted and measured figures."""

    assignment: dict[str, str]
    recipe: Recipe
    predicted: dict
    measured: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)     # the float model, measured the same way
    constraints: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict, repr=False)   # the measure_options result

    def to_dict(self) -> dict:
        return {"assignment": self.assignment, "predicted": self.predicted,
                "measured": self.measured, "baseline": self.baseline,
                "constraints": self.constraints,
                "recipe": self.recipe.to_dict()}


def _plan_recipe(assignment, modules, options) -> Recipe:
    rules = []
    for name, opt in assignment.items():
        f = options[opt]
        if f is None:
            continue
        if isinstance(modules[name], torch.nn.Embedding):
            f = {k: v for k, v in f.items() if k != "act"}
        rules.append(Rule(pattern=escape(name), **f))
    if not rules:
        rules.append(Rule(pattern="__lowbit_nothing__", keep="fp32"))
    return Recipe(tuple(rules), name="advisor", description="per-layer plan by lowbit recommend")


def recommend(model, data, metric=None, *, size_mb: float | None = None,
              latency_ms: float | None = None, min_metric: float | None = None,
              priority: str = "balanced", options: dict | None = None, latency_fn=None,
              size_fn=None, eval_metric=None, rows: int = 256, calib_data=None,
              measurements: dict | None = None, progress=None) -> Plan:
    """A per-layer plan meeting the constraints, chosen from measured costs.

    Args:
        model: the float model (left unchanged).
        data: batches for calibration and the default metric.
        metric: ``metric(model) -> float``, higher is better (default: output cosine).
        size_mb: model size budget in MB (10^6 bytes), all stored bytes counted.
        latency_ms: latency budget in ms of ``latency_fn(model)`` (or of the summed layer
            times when no ``latency_fn``).
        min_metric: accuracy floor on ``metric``.
        priority: ``accuracy``, ``latency`` or ``balanced``: what the plan minimizes.
        options: ``{name: rule fields or None}``; default ``OPTIONS``.
        latency_fn: ``latency_fn(model) -> seconds`` for the whole model (prediction base
            and the measured figure).
        size_fn: ``size_fn(model) -> bytes`` (default ``model_nbytes``).
        eval_metric: metric for the final measurement (default ``metric``).
        measurements: a previous ``Plan.table`` to reuse (skips measuring).

    Returns:
        ``Plan``; ``plan.recipe.save("plan.toml")`` writes it for ``lowbit quantize``.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")
    for what, v in (("size_mb", size_mb), ("latency_ms", latency_ms)):
        if v is not None and not v > 0:
            raise ValueError(f"{what} must be a positive number; got {v!r}")
    options = dict(OPTIONS if options is None else options)
    options.setdefault("fp32", None)
    batches = list(data)
    metric = metric or output_cosine(model, batches)
    size_fn = size_fn or model_nbytes
    table = measurements or measure_options(model, batches, metric, options, rows=rows,
                                            calib_data=calib_data, progress=progress)
    layers = table["layers"]
    modules = dict(model.named_modules())
    names = list(layers)
    opts = [[o for o in options if o in layers[n]] for n in names]
    drop = [np.array([layers[n][o]["drop"] for o in os_]) for n, os_ in zip(names, opts)]
    nbytes = [np.array([layers[n][o]["bytes"] for o in os_]) for n, os_ in zip(names, opts)]
    times = [np.array([layers[n][o]["time"] for o in os_]) for n, os_ in zip(names, opts)]
    float_bytes = size_fn(model)
    fixed_bytes = float_bytes - sum(layers[n]["fp32"]["bytes"] for n in names)
    base_latency = latency_fn(model) if latency_fn else None
    layer_fp32_time = sum(layers[n]["fp32"]["time"] for n in names)
    rest_time = (base_latency - layer_fp32_time) if base_latency else 0.0
    scale = max(max(float(d.max()) for d in drop), 1e-9)
    objective = {"accuracy": lambda i: drop[i] + 1e-12 * nbytes[i],
                 "latency": lambda i: times[i] + 1e-9 * drop[i],
                 "balanced": lambda i: np.maximum(drop[i], 0) / scale
                 + times[i] / layer_fp32_time}[priority]
    cost = [objective(i) for i in range(len(names))]
    if size_mb is not None:
        unit = 4096
        weight = [np.ceil(b / unit).astype(int) for b in nbytes]
        cap = int((size_mb * 1e6 - fixed_bytes) // unit)
    elif latency_ms is not None:
        weight = [np.ceil(t * 1e6).astype(int) for t in times]
        cap = int((latency_ms / 1e3 - rest_time) * 1e6)
    elif min_metric is not None:
        weight = [np.ceil(np.maximum(d, 0) * 1e6).astype(int) for d in drop]
        cap = int((table["base"] - min_metric) * 1e6)
        cost = [(t if priority == "latency" else b.astype(float)) for t, b in zip(times, nbytes)]
    else:
        weight, cap = [np.zeros(len(d), dtype=int) for d in drop], 0
    picks = _knapsack(cost, weight, cap) if cap >= 0 else None
    if picks is None:
        raise ValueError("no plan meets the constraints with these options (size "
                         f"{size_mb} MB, latency {latency_ms} ms, floor {min_metric}); the "
                         "smallest plan is "
                         f"{(fixed_bytes + sum(int(b.min()) for b in nbytes)) / 1e6:.2f} MB")
    assignment = {n: opts[i][j] for i, (n, j) in enumerate(zip(names, picks))}
    pred_drop = sum(float(drop[i][j]) for i, j in enumerate(picks))
    pred_time = rest_time + sum(float(times[i][j]) for i, j in enumerate(picks))
    predicted = {"size_mb": (fixed_bytes + sum(int(nbytes[i][j]) for i, j in enumerate(picks)))
                 / 1e6, "metric": table["base"] - pred_drop, "latency_ms": pred_time * 1e3}
    recipe = _plan_recipe(assignment, modules, options)
    plan = Plan(assignment, recipe, predicted, constraints={
        "size_mb": size_mb, "latency_ms": latency_ms, "min_metric": min_metric,
        "priority": priority}, table=table)
    qmodel, _ = quantized_copy(model, recipe, calib_data or batches)
    qmodel.eval()
    final = eval_metric or metric
    plan.measured = {"size_mb": size_fn(qmodel) / 1e6, "metric": final(qmodel),
                     "latency_ms": None if latency_fn is None else latency_fn(qmodel) * 1e3}
    plan.baseline = {"size_mb": float_bytes / 1e6, "metric": final(model),
                     "latency_ms": None if latency_fn is None else latency_fn(model) * 1e3}
    return plan
