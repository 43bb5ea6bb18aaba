"""Per-layer debug report: where did accuracy go, and what would fix it.

``debug(float_model, quantized_model_or_recipe, data)`` runs the quantized model once over
``data`` with a forward hook on every quantized layer (``QuantLinear``, ``QuantConv2d``,
``QuantEmbedding``, ``KeepPrecision``). Each hook runs the layer's float twin on the same
input, so the error it measures is the layer's own (not what earlier layers passed on),
and feeds streaming statistics (``lowbit.analysis.stats``): running error sums, an input
histogram and per-channel min/max/clip counts. Memory is bounded by the layer sizes, never
by the amount of data. The model output is also compared with the float model's (padding
positions left out when batches carry an ``attention_mask``).

Per layer (``LayerRecord``):

* weight error (float weight vs dequantized), output error (float layer vs quantized layer
  on the same input), and the output error of the weight alone (float input x dequantized
  weight), each as MSE, SQNR (dB) and cosine;
* outliers: share of values beyond ``k_sigma`` standard deviations, and max|x| / median|x|,
  for the weight and the input activations;
* saturated channels: output channels (weights) / input channels (activations) whose share
  of clipped values exceeds ``clip_threshold``;
* per-channel scale statistics (min, median, max, max/min of the weight's scales);
* the scheme (weight, activation, mode), the kernel (``module.backend``), bytes;
* ``needs_requantization`` (output SQNR below ``min_sqnr_db`` or activation channels
  clipped) and a measured fix (``lowbit.analysis.advice``).

>>> report = lb.analysis.debug(model, "a8w4", batches)
>>> report.print(); report.to_html("report.html")
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..nn import KeepPrecision, QuantConv2d, QuantLinear
from ..quant import QParams, QTensor, fake_quantize
from .advice import merged_rule, suggest_fix
from .runner import call_model, first_tensor, quantized_layers, real_positions
from .stats import ErrorStats, RunningStats, outlier_stats

__all__ = [
    "DebugReport",
    "LayerRecord",
    "call_model",
    "debug",
    "first_tensor",
    "quantized_layers",
]

@dataclass
class LayerRecord:
    """One quantized layer of a ``DebugReport`` (figures as plain floats; dB, bytes)."""

    name: str
    kind: str
    weight_scheme: str | None
    act_scheme: str | None
    act_mode: str | None
    backend: str
    nbytes: int
    float_nbytes: int
    weight_error: dict
    output_error: dict
    weight_only_output_error: dict | None
    act_error: dict | None
    weight_outliers: dict
    act_outliers: dict | None
    weight_saturated_channels: list[int]
    act_saturated_channels: list[int]
    scale_stats: dict | None
    needs_requantization: bool = False
    suggestion: str = ""
    suggested_rule: dict | None = None
    plots: dict = field(default_factory=dict, repr=False)   # histogram/range data for HTML

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("plots")
        return d


def _scale_stats(q: QTensor) -> dict:
    s = q.scale_values().detach().double().flatten()
    s = s[s > 0]
    if not s.numel():
        return {"count": 0}
    return {"count": s.numel(), "min": float(s.min()), "median": float(s.median()),
            "max": float(s.max()), "max_over_min": float(s.max() / s.min())}


def _clip_mask(x: torch.Tensor, scheme, qparams) -> torch.Tensor:
    """Bool mask of the values of ``x`` the quantizer clips: the straight-through gradient
    of ``fake_quantize`` is 1 inside the range and 0 outside (the core's own definition)."""
    with torch.enable_grad():
        xg = x.detach().float().clone().requires_grad_(True)
        y = fake_quantize(xg, scheme, qparams)
        y.sum().backward()
    # a value exactly at the range end may test outside by one ulp: count real clips only
    return (xg.grad == 0) & ((x - y.detach()).abs() > 1e-5 * x.abs())


def _weight_qparams(q: QTensor) -> QParams | None:
    if q.scheme.is_block_scaled:   # MX: from the data; NVFP4: the stored tensor scale
        return None if q.tensor_scale is None else QParams(q.tensor_scale)
    return QParams(q.scale, q.zero_point)


def _float_weight(fmod) -> torch.Tensor | None:
    w = getattr(fmod, "weight", None)
    if w is None:
        return None
    w = w.detach().float()
    return w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)


class _Probe:
    """Streaming statistics of one quantized layer, fed by its forward hook."""

    def __init__(self, name, qmod, fmod, bins: int):
        self.name, self.qmod, self.fmod = name, qmod, fmod
        self.out, self.w_only, self.act_err = ErrorStats(), ErrorStats(), ErrorStats()
        self.act = RunningStats(bins)
        self.w = _float_weight(fmod)
        self.w_hat = None
        if isinstance(qmod, KeepPrecision):
            kw = getattr(qmod.module, "weight", None)
            self.w_hat = None if kw is None else kw.detach().float().reshape(self.w.shape)
        elif hasattr(qmod, "weight_q"):
            self.w_hat = qmod.weight_q.dequantize().reshape(self.w.shape)
        # SmoothQuant: the kernel sees x / s and a weight quantized as w * s (per column)
        self.s = getattr(qmod, "input_scale", None)
        if self.s is not None:
            self.w_hat = self.w_hat / self.s
        self.matmul = isinstance(qmod, (QuantLinear, QuantConv2d))

    def _act_view(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the kernel sees it: [rows, reduction]."""
        if isinstance(self.qmod, QuantConv2d):
            g = self.qmod.geometry
            x = F.unfold(x.float(), g["kernel_size"], g["dilation"], g["padding"], g["stride"])
            x = x.transpose(1, 2)
        x2 = x.reshape(-1, x.shape[-1]).float()
        return x2 if self.s is None else x2 * (1 / self.s.float())  # as the kernels do

    def hook(self, mod, args, kwargs, out):
        with torch.no_grad():
            ref = self.fmod(*args, **kwargs)
            self.out.update(first_tensor(ref), first_tensor(out))
            if not self.matmul:
                return
            x = args[0]
            bias = self.fmod.bias
            if isinstance(self.qmod, QuantLinear):
                y_w = F.linear(x.float(), self.w_hat, bias)
            else:
                y_w = self.fmod._conv_forward(x.float(), self.w_hat.view_as(self.fmod.weight),
                                              bias)
            self.w_only.update(first_tensor(ref), y_w)
            x2 = self._act_view(x)
            act = self.qmod.act
            if act is None:
                self.act.update(x2)
                return
            qp = None if (act.is_dynamic or act.is_block_scaled) else self.qmod.act_qparams
            self.act.update(x2, _clip_mask(x2, act, qp))
            self.act_err.update(x2, fake_quantize(x2, act, qp))

    # -- turning the statistics into a record -------------------------------------------

    def _w_quantized(self, q: QTensor) -> torch.Tensor:
        """The float weight as it was quantized (times the SmoothQuant scale, if any)."""
        w = self.w.reshape(q.shape)
        return w if self.s is None else w * self.s

    def _act_clip_range(self):
        act, qp = getattr(self.qmod, "act", None), getattr(self.qmod, "act_qparams", None)
        if act is None or qp is None or act.is_dynamic or act.is_block_scaled:
            return None
        z = 0.0 if qp.zero_point is None else float(qp.zero_point.flatten()[0])
        s = float(qp.scale.flatten()[0])
        return [(act.format.min - z) * s, (act.format.max - z) * s]

    def record(self, rule, k_sigma, clip_threshold, min_sqnr_db) -> LayerRecord:
        q = getattr(self.qmod, "weight_q", None)
        w_err, w_out, w_sat, w_plot = ErrorStats(), {}, [], {}
        if self.w is not None and self.w_hat is not None:
            w_err.update(self.w, self.w_hat)
            w_out = outlier_stats(self.w, k_sigma)
            ws = RunningStats(self.act.bins)
            mask = None
            if q is not None:
                mask = _clip_mask(self._w_quantized(q), q.scheme, _weight_qparams(q))
                share = mask.double().mean(1)
                w_sat = torch.nonzero(share > clip_threshold).flatten().tolist()
            ws.update(self.w.T, None if mask is None else mask.T)
            bound = float(self.w_hat.abs().max())
            w_plot = {"hist": ws.hist.tolist(), "radius": ws.radius, "clip": [-bound, bound],
                      "ch_min": ws.ch_min.tolist(), "ch_max": ws.ch_max.tolist(),
                      "ch_clip": self.w_hat.abs().amax(1).tolist()}
        act_out, a_sat, a_plot, ratio = None, [], {}, None
        if self.act.count:
            act_out = {"outlier_ratio": self.act.outlier_ratio(k_sigma),
                       "max_median_ratio": self.act.max_median_ratio()}
            amax = self.act.channel_absmax().double()
            med = float(amax.median())
            ratio = float(amax.max()) / med if med > 0 else float("inf")
            act_out["channel_max_median_ratio"] = ratio
            a_sat = torch.nonzero(self.act.clipped_share() > clip_threshold).flatten().tolist()
            a_plot = {"hist": self.act.hist.tolist(), "radius": self.act.radius,
                      "clip": self._act_clip_range(), "ch_min": self.act.ch_min.tolist(),
                      "ch_max": self.act.ch_max.tolist()}
        weight = q.scheme if q is not None else None
        act = getattr(self.qmod, "act", None)
        act_mode = None if act is None else (
            "dynamic" if (act.is_dynamic or act.is_block_scaled) else "static")
        if isinstance(self.qmod, KeepPrecision):
            scheme_txt = f"keep {self.qmod.dtype_name}"
        else:
            scheme_txt = None if weight is None else str(weight)
        out_sqnr = self.out.sqnr_db
        w_only = self.w_only.to_dict() if self.w_only.n else None
        needs = bool(out_sqnr < min_sqnr_db or a_sat)
        fix_text, fix_rule = "", None
        if needs:
            fix = suggest_fix(
                w2d=None if q is None else self._w_quantized(q), weight=weight,
                weight_clip=None if rule is None else rule.weight_clip, act=act,
                act_mode=act_mode, sqnr_out=out_sqnr,
                sqnr_w_only=None if w_only is None else w_only["sqnr_db"],
                sqnr_weight=w_err.sqnr_db if w_err.n else None, target_db=min_sqnr_db,
                act_saturated=len(a_sat), act_channel_ratio=ratio,
                smoothed=self.s is not None)
            fix_text, fix_rule = fix.text, merged_rule(self.name, rule, fix.rule)
        try:
            backend = str(self.qmod.backend)
        except Exception as e:  # noqa: BLE001 - a report should not die on a kernel query
            backend = f"unknown ({type(e).__name__})"
        return LayerRecord(
            name=self.name, kind=type(self.fmod).__name__, weight_scheme=scheme_txt,
            act_scheme=None if act is None else str(act), act_mode=act_mode, backend=backend,
            nbytes=int(self.qmod.nbytes), float_nbytes=sum(
                t.numel() * t.element_size() for t in self.fmod.state_dict().values()),
            weight_error=w_err.to_dict() if w_err.n else {}, output_error=self.out.to_dict(),
            weight_only_output_error=w_only,
            act_error=self.act_err.to_dict() if self.act_err.n else None,
            weight_outliers=w_out, act_outliers=act_out, weight_saturated_channels=w_sat,
            act_saturated_channels=a_sat, scale_stats=None if q is None else _scale_stats(q),
            needs_requantization=needs, suggestion=fix_text, suggested_rule=fix_rule,
            plots={"weight": w_plot, "act": a_plot})


@dataclass
class DebugReport:
    """Per-layer records plus the model-level output error; print, save as JSON or HTML."""

    records: list[LayerRecord]
    model_output_error: dict
    recipe: str
    settings: dict
    base_recipe: object = field(default=None, repr=False)   # the Recipe, when known

    def fixed_recipe(self):
        """The recipe with every flagged layer's suggested rule put first (one rule per
        layer, by exact name), for ``quantize_model`` or ``Recipe.save``."""
        from ..recipes import Recipe, Rule

        if self.base_recipe is None:
            raise ValueError("this report was made from a quantized model without a recipe; "
                             "pass a recipe to debug() to get a fixed one")
        fixes = tuple(Rule.from_dict(r.suggested_rule, f"fix for {r.name}")
                      for r in self.records if r.needs_requantization and r.suggested_rule)
        return Recipe(fixes + self.base_recipe.rules, name=f"{self.base_recipe.name}-fixed",
                      description=f"{self.base_recipe.name} with lowbit debug's {len(fixes)} "
                                  "per-layer fixes first")

    def worst(self, n: int = 5) -> list[LayerRecord]:
        """The ``n`` layers with the lowest output SQNR."""
        return sorted(self.records, key=lambda r: r.output_error["sqnr_db"])[:n]

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "settings": self.settings,
                "model_output_error": self.model_output_error,
                "layers": [r.to_dict() for r in self.records]}

    def to_json(self, path) -> None:
        from .render import jsonable

        with open(path, "w", encoding="utf-8") as f:
            json.dump(jsonable(self.to_dict()), f, indent=1, default=str)

    def table(self, top: int | None = None):
        """A rich ``Table``, one row per layer (the ``top`` worst only, when given)."""
        from .render import debug_table

        return debug_table(self, top)

    def print(self, top: int | None = None, console=None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table(top))

    def to_html(self, path) -> None:
        """A self-contained HTML page (inline PNG plots, no external files) at ``path``."""
        from .render import debug_html

        with open(path, "w", encoding="utf-8") as f:
            f.write(debug_html(self))


def debug(float_model: torch.nn.Module, quantized_model_or_recipe, data, *,
          calib_data=None, k_sigma: float = 6.0, clip_threshold: float = 0.05,
          min_sqnr_db: float = 20.0, bins: int = 256) -> DebugReport:
    """Measure every quantized layer of a model against its float twin.

    Args:
        float_model: the float model (unchanged).
        quantized_model_or_recipe: a model quantized from ``float_model`` (same module
            names), or a recipe (``Recipe``, preset name or file) to quantize a copy with.
        data: batches (dict / tuple / tensor each) run through both models.
        calib_data: batches to calibrate static activations when a recipe is given
            (default: ``data``).
        k_sigma: outlier threshold in standard deviations.
        clip_threshold: a channel is saturated when more than this share of its values
            is clipped.
        min_sqnr_db: layers whose output SQNR is below this need requantization.
        bins: histogram bins per stream (a multiple of 4).

    Returns:
        ``DebugReport`` with one ``LayerRecord`` per quantized layer, in model order.
    """
    if not isinstance(float_model, torch.nn.Module):
        raise TypeError(f"float_model must be a torch.nn.Module; got {type(float_model).__name__}")
    batches = list(data)
    if not batches:
        raise ValueError("data is empty: give at least one batch")
    from ..recipes import Recipe

    if isinstance(quantized_model_or_recipe, torch.nn.Module):
        qmodel = quantized_model_or_recipe
        recipe = getattr(qmodel, "lowbit_recipe", None)
    else:
        from ..ptq import quantize_model

        recipe = Recipe.resolve(quantized_model_or_recipe)
        qmodel = quantize_model(copy.deepcopy(float_model), recipe,
                                calib_data=batches if calib_data is None else calib_data,
                                progress=False)
    plan = recipe.plan(float_model) if recipe is not None else {}
    layers = quantized_layers(qmodel)
    if not layers:
        raise ValueError("the quantized model holds no lowbit quantized layers; quantize it "
                         "first (lowbit.ptq.quantize_model) or pass a recipe")
    probes = []
    for name, qmod in layers.items():
        try:
            fmod = float_model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"quantized layer {name!r} has no twin of that name in "
                             "float_model; pass the float model it was quantized from") from None
        probes.append(_Probe(name, qmod, fmod, bins))
    handles = [p.qmod.register_forward_hook(p.hook, with_kwargs=True) for p in probes]
    model_err = ErrorStats()
    modes = float_model.training, qmodel.training
    float_model.eval(), qmodel.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                yq = real_positions(first_tensor(call_model(qmodel, batch)), batch)
                yf = real_positions(first_tensor(call_model(float_model, batch)), batch)
                model_err.update(yf, yq)
    finally:
        for h in handles:
            h.remove()
        float_model.train(modes[0]), qmodel.train(modes[1])
    records = [p.record(plan.get(p.name), k_sigma, clip_threshold, min_sqnr_db) for p in probes]
    settings = {"k_sigma": k_sigma, "clip_threshold": clip_threshold, "min_sqnr_db": min_sqnr_db,
                "batches": len(batches), "bins": bins}
    return DebugReport(records, model_err.to_dict(),
                       "custom" if recipe is None else recipe.name, settings, recipe)

