"""Rendering of analysis results: rich tables for the terminal, self-contained HTML pages.

Pages are one file: plots are PNGs drawn with matplotlib (Agg backend, no display) and
inlined as ``data:image/png;base64`` images; the style sheet is inline; nothing is fetched,
so a browser opens the page offline.
"""

from __future__ import annotations

import base64
import html
import io
import math

__all__ = ["debug_html", "debug_table", "figure", "fmt", "html_table", "page", "png"]


def fmt(v, digits: int = 3) -> str:
    """A number for a table cell: '-' for None, 'inf' spelled out, else ``digits`` sig."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def jsonable(obj):
    """``obj`` with every non-finite float spelled as a string ("inf", "-inf", "nan"), so
    the JSON written is strict (browsers' ``JSON.parse`` rejects ``Infinity``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def figure(nrows: int = 1, ncols: int = 1, size=(7, 3)):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def png(fig) -> str:
    """``<img>`` tag holding ``fig`` as an inline base64 PNG; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def html_table(columns: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}tr.bad td{background:#fde2e2}img{max-width:100%}
h2{margin-top:1.5em}.note{color:#555;font-size:13px}"""


def page(title: str, body: str) -> str:
    """A complete HTML5 document with an inline style sheet."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


# -- the debug report -----------------------------------------------------------------------

_COLUMNS = ["layer", "scheme (W / A)", "backend", "W SQNR dB", "out SQNR dB", "W-only out dB",
            "out cos", "W outl % / max:med", "A outl % / max:med", "sat ch W / A",
            "scale max:min", "fix"]


def _row(r) -> list[str]:
    def outl(o):
        return "-" if not o else f"{100 * o['outlier_ratio']:.2g} / {fmt(o['max_median_ratio'])}"

    scheme = (r.weight_scheme or "-") + " / " + (r.act_scheme or "-")
    if r.act_mode == "static":
        scheme += " (static)"
    w_only = r.weight_only_output_error
    return [r.name, scheme, r.backend, fmt(r.weight_error.get("sqnr_db")),
            fmt(r.output_error["sqnr_db"]), fmt(w_only and w_only["sqnr_db"]),
            f"{r.output_error['cosine']:.5f}", outl(r.weight_outliers), outl(r.act_outliers),
            f"{len(r.weight_saturated_channels)} / {len(r.act_saturated_channels)}",
            fmt((r.scale_stats or {}).get("max_over_min")),
            r.suggestion if r.needs_requantization else "ok"]


_TERMINAL = [0, 1, 3, 4, 5, 6, 7, 8, 9, 11]   # columns of _COLUMNS shown in the terminal


def debug_table(report, top: int | None = None):
    from rich.table import Table

    m = report.model_output_error
    t = Table(title=f"lowbit debug: recipe {report.recipe!r}; model output SQNR "
                    f"{fmt(m['sqnr_db'])} dB, cosine {m['cosine']:.5f}", show_lines=False)
    for c in [_COLUMNS[i] for i in _TERMINAL]:
        t.add_column(c, justify="left" if c in ("layer", "scheme (W / A)", "backend", "fix")
                     else "right", overflow="fold")
    records = report.worst(top) if top else report.records
    for r in records:
        row = _row(r)
        t.add_row(*[row[i] for i in _TERMINAL], style="red" if r.needs_requantization else None)
    return t


def _sqnr_bars(report) -> str:
    recs = report.records
    fig, ax = figure(size=(9, max(3, 0.22 * len(recs) + 1)))
    ax = ax[0][0]
    names = [r.name for r in recs]
    out = [min(r.output_error["sqnr_db"], 99) for r in recs]
    w_only = [min((r.weight_only_output_error or {}).get("sqnr_db", float("nan")), 99)
              for r in recs]
    y = list(range(len(recs)))
    ax.barh([i + 0.2 for i in y], out, height=0.4, label="output (W + A)",
            color=["#d62728" if r.needs_requantization else "#1f77b4" for r in recs])
    ax.barh([i - 0.2 for i in y], w_only, height=0.4, label="weight only", color="#aec7e8")
    ax.axvline(report.settings["min_sqnr_db"], color="k", ls="--", lw=1, label="threshold")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def _hist(ax, data: dict, title: str) -> None:
    if not data:
        ax.set_visible(False)
        return
    n, r = len(data["hist"]), data["radius"]
    w = 2 * r / n
    centers = [-r + w * (i + 0.5) for i in range(n)]
    ax.bar(centers, data["hist"], width=w, color="#7f7f7f")
    ax.set_yscale("log")
    if data.get("clip"):
        for c in data["clip"]:
            ax.axvline(c, color="#d62728", ls="--", lw=1)
        title += " (clip range dashed)"
    else:
        title += " (dynamic range: no fixed clip)"
    ax.set_title(title, fontsize=8)


def _ranges(ax, data: dict, title: str) -> None:
    if not data:
        ax.set_visible(False)
        return
    lo, hi = data["ch_min"], data["ch_max"]
    step = max(1, len(lo) // 2000)          # at most ~2000 channels drawn
    xs = list(range(0, len(lo), step))
    ax.fill_between(xs, [lo[i] for i in xs], [hi[i] for i in xs], color="#1f77b4", lw=0,
                    step="mid", alpha=0.8, label="min..max")
    if data.get("ch_clip"):
        c = data["ch_clip"]
        ax.plot(xs, [c[i] for i in xs], color="#d62728", lw=0.6, label="clip (max |w_hat|)")
        ax.plot(xs, [-c[i] for i in xs], color="#d62728", lw=0.6)
    elif data.get("clip"):
        for c in data["clip"]:
            ax.axhline(c, color="#d62728", ls="--", lw=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("channel", fontsize=7)
    ax.legend(fontsize=6)


def _layer_plot(r) -> str:
    fig, ax = figure(1, 4, size=(14, 2.8))
    _hist(ax[0][0], r.plots.get("weight"), "weight histogram")
    _hist(ax[0][1], r.plots.get("act"), "input activation histogram")
    _ranges(ax[0][2], r.plots.get("weight"), "per-output-channel weight range")
    _ranges(ax[0][3], r.plots.get("act"), "per-input-channel activation range")
    return png(fig)


def debug_html(report, max_layer_plots: int = 16) -> str:
    m = report.model_output_error
    bad = [r for r in report.records if r.needs_requantization]
    s = report.settings
    summary = (f"<p>Recipe <b>{html.escape(report.recipe)}</b>; {len(report.records)} quantized "
               f"layers, <b>{len(bad)}</b> need requantization (output SQNR below "
               f"{s['min_sqnr_db']} dB or clipped activation channels). Model output: SQNR "
               f"{fmt(m['sqnr_db'])} dB, cosine {m['cosine']:.5f}, MSE {fmt(m['mse'])}.</p>"
               f"<p class=note>Errors are each layer's own: its float twin runs on the same "
               f"input. Outliers: share beyond {s['k_sigma']} std; saturated: share clipped "
               f"above {100 * s['clip_threshold']:g}%. {s['batches']} batches.</p>")
    rows = []
    for r in report.records:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _row(r))
        rows.append(f'<tr class="{"bad" if r.needs_requantization else ""}">{cells}</tr>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    table = (f'<table id="layers"><thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>")
    order = list(dict.fromkeys([r.name for r in bad] +
                               [r.name for r in report.worst(len(report.records))]))
    keep = set(order[:max_layer_plots])
    chosen = [r for r in report.records if r.name in keep]
    details = "".join(f'<h3 id="layer-{html.escape(r.name)}">{html.escape(r.name)}: '
                      f"{html.escape(r.suggestion or 'ok')}</h3>{_layer_plot(r)}"
                      for r in chosen)
    body = (summary + "<h2>Per-layer SQNR</h2>" + _sqnr_bars(report) +
            "<h2>Layers</h2>" + table +
            "<h2>Histograms and per-channel ranges</h2><p class=note>Layers needing "
            "requantization first, then the lowest output SQNR.</p>" + details)
    return page("lowbit debug report", body)
