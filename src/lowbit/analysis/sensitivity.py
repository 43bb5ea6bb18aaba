"""Layer sensitivity: how much the model metric moves when one layer is quantized alone, and
when one layer alone is left in float.

``sensitivity(model, recipe, data, metric)`` quantizes a copy of ``model`` with ``recipe``
once (so calibration and weight searches run once), then swaps modules in and out:

* ``alone``: the float model with only layer L quantized; ``drop_alone = metric(float) -
  metric(alone)`` is L's own cost.
* ``all_but``: the quantized model with only L back in float; ``gain_all_but =
  metric(all_but) - metric(quantized)`` is what keeping L in float buys back (it includes
  L's interactions with the other layers' errors).

The metric is "higher is better": a function ``metric(model) -> float`` (for the bundled
encoder, mean cosine of embeddings to FP32), or by default the mean cosine similarity of
the model's main output (rows along the last axis) to the float model's on ``data``.

>>> rep = lb.analysis.sensitivity(model, "a8w4", batches)
>>> rep.print(); rep.to_html("sensitivity.html")
"""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass

import torch

from .runner import call_model, first_tensor, quantized_layers, real_positions

__all__ = ["SensitivityReport", "output_cosine", "quantized_copy", "sensitivity", "swap"]


def swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def output_cosine(float_model: torch.nn.Module, data):
    """A metric: mean cosine similarity of ``model``'s output rows to ``float_model``'s on
    ``data`` (reference outputs computed once, here; padding positions left out)."""
    batches = list(data)
    with torch.no_grad():
        refs = [real_positions(first_tensor(call_model(float_model, b)), b).float()
                for b in batches]

    def metric(model) -> float:
        total, n = 0.0, 0
        with torch.no_grad():
            for b, ref in zip(batches, refs):
                y = real_positions(first_tensor(call_model(model, b)), b).float()
                cos = torch.nn.functional.cosine_similarity(
                    ref.reshape(-1, ref.shape[-1]), y.reshape(-1, y.shape[-1]), dim=1)
                total, n = total + float(cos.sum()), n + cos.numel()
        return total / n

    return metric


def quantized_copy(model, recipe, calib_data):
    """(quantized deep copy of ``model``, its quantized layers by name)."""
    from ..ptq import quantize_model

    q = quantize_model(copy.deepcopy(model), recipe, calib_data=calib_data, progress=False)
    return q, quantized_layers(q)


@dataclass
class SensitivityReport:
    """Rows sorted by ``drop_alone`` (largest first), plus the float and quantized metrics."""

    rows: list[dict]
    float_metric: float
    quantized_metric: float
    recipe: str
    metric_name: str

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "metric": self.metric_name,
                "float_metric": self.float_metric, "quantized_metric": self.quantized_metric,
                "layers": self.rows}

    def table(self):
        from rich.table import Table

        t = Table(title=f"lowbit sensitivity: recipe {self.recipe!r}, metric "
                        f"{self.metric_name}: float {self.float_metric:.6f}, quantized "
                        f"{self.quantized_metric:.6f}")
        for c in ["layer", "scheme", "metric alone", "drop alone", "metric all-but",
                  "gain all-but"]:
            t.add_column(c, justify="left" if c in ("layer", "scheme") else "right")
        for r in self.rows:
            t.add_row(r["layer"], r["scheme"], f"{r['metric_alone']:.6f}",
                      f"{r['drop_alone']:.2e}",
                      "-" if r["metric_all_but"] is None else f"{r['metric_all_but']:.6f}",
                      "-" if r["gain_all_but"] is None else f"{r['gain_all_but']:.2e}")
        return t

    def print(self, console=None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())

    def plot(self) -> str:
        """Bar chart of the drops (and all-but gains) as an inline ``<img>`` tag."""
        from .render import figure, png

        fig, ax = figure(size=(9, max(3, 0.22 * len(self.rows) + 1)))
        ax = ax[0][0]
        y = list(range(len(self.rows)))
        ax.barh([i + 0.2 for i in y], [r["drop_alone"] for r in self.rows], height=0.4,
                label="drop, this layer alone quantized", color="#d62728")
        gains = [r["gain_all_but"] for r in self.rows]
        if any(g is not None for g in gains):
            ax.barh([i - 0.2 for i in y], [g or 0 for g in gains], height=0.4,
                    label="gain, this layer alone in float", color="#2ca02c")
        ax.set_yticks(y)
        ax.set_yticklabels([r["layer"] for r in self.rows], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(f"change in {self.metric_name}")
        ax.legend(fontsize=7)
        return png(fig)

    def to_html(self, path) -> None:
        from .render import html_table, page

        def num(v, spec):
            return "-" if v is None else format(v, spec)

        rows = [[r["layer"], r["scheme"], num(r["metric_alone"], ".6f"),
                 num(r["drop_alone"], ".2e"), num(r["metric_all_but"], ".6f"),
                 num(r["gain_all_but"], ".2e")] for r in self.rows]
        body = (f"<p>Recipe <b>{html.escape(self.recipe)}</b>, metric "
                f"{html.escape(self.metric_name)}: float {self.float_metric:.6f}, quantized "
                f"{self.quantized_metric:.6f}.</p>" + self.plot() +
                html_table(["layer", "scheme", "metric alone", "drop alone", "metric all-but",
                            "gain all-but"], rows))
        with open(path, "w", encoding="utf-8") as f:
            f.write(page("lowbit sensitivity", body))


def _scheme_text(mod) -> str:
    if hasattr(mod, "dtype_name"):
        return f"keep {mod.dtype_name}"
    act = getattr(mod, "act", None)
    return str(mod.weight_q.scheme) + ("" if act is None else f" / {act}")


def sensitivity(model: torch.nn.Module, recipe, data, metric=None, *, calib_data=None,
                all_but: bool = True, metric_name: str | None = None) -> SensitivityReport:
    """Quantize one layer at a time (and leave one layer in float at a time).

    Args:
        model: the float model (left unchanged).
        recipe: ``Recipe``, preset name or recipe file.
        data: batches (dict / tuple / tensor) for the default metric and calibration.
        metric: ``metric(model) -> float``, higher is better; default: ``output_cosine``.
        calib_data: batches for static activation calibration (default ``data``).
        all_but: also measure "all layers quantized but this one" (one more pass per layer).
        metric_name: label for tables and plots.

    Returns:
        ``SensitivityReport`` sorted by the drop each layer causes alone, largest first.
    """
    from ..recipes import Recipe

    recipe = Recipe.resolve(recipe)
    batches = list(data)
    if metric is None:
        metric, metric_name = output_cosine(model, batches), metric_name or "output cosine"
    qmodel, layers = quantized_copy(model, recipe, batches if calib_data is None else calib_data)
    if not layers:
        raise ValueError(f"recipe {recipe.name!r} quantizes no layer of this model")
    work = copy.deepcopy(model).eval()
    qmodel.eval()
    base, full = metric(work), metric(qmodel)
    rows = []
    for name, qmod in layers.items():
        old = swap(work, name, qmod)
        alone = metric(work)
        swap(work, name, old)
        but = None
        if all_but:
            swap(qmodel, name, old)
            but = metric(qmodel)
            swap(qmodel, name, qmod)
        rows.append({"layer": name, "scheme": _scheme_text(qmod), "metric_alone": alone,
                     "drop_alone": base - alone, "metric_all_but": but,
                     "gain_all_but": None if but is None else but - full})
    rows.sort(key=lambda r: -r["drop_alone"])
    return SensitivityReport(rows, base, full, recipe.name, metric_name or "metric")
