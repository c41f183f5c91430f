"""`report.html`: one self-contained page for a report.json, figures inline, nothing fetched from a network.

The page has a header naming the models, a table of contents and one section per kind of result
that at least one model has: a summary that sets the models side by side (the best value per
column marked), training curves, language modelling (perplexity against the Kneser-Ney baseline),
classification (per-class table and confusion matrix), tagging, QA, generation, multiple choice,
lm-eval, robustness, calibration (reliability diagrams), efficiency and interpretability
(attention heat-map and saliency). Figures are drawn by matplotlib (Agg, through `Figure` objects,
never pyplot's global state) and embedded as base64 PNG data URIs; every text that comes from the
data (labels, tokens, model names) is HTML-escaped. A Content-Security-Policy allows data: images,
the inline stylesheet and the one tiny inline script (by its hash) and nothing else; the script
writes `data-images-ok="decoded/total"` on <body> after load, which the browser test reads.

Torch-free; matplotlib is imported when a page is rendered.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.evaluate.report import SCHEMA, validate
from lmforge.fileio import atomic_write_bytes

HTML_FILE = "report.html"
DPI = 144  # figures are drawn at 1.5x their CSS size, so they stay sharp on high-density screens
_CSS_DPI = 96
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10: one colour per model, the same in every figure
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
              "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN", "SimHei")

SCRIPT = ('addEventListener("load",function(){var m=document.images,k=0;for(var i=0;i<m.length;i++)'
          'if(m[i].complete&&m[i].naturalWidth>0)k++;var b=document.body;b.setAttribute("data-images-ok",'
          'k+"/"+m.length);b.setAttribute("data-scroll-width",document.documentElement.scrollWidth)});')

STYLE = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dfe3ea;--bg:#f4f6f9;--card:#fff;--head:#eef1f6;--best:#dff3e3;
--accent:#2f6fde}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",
"Noto Sans CJK SC",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#18202e;color:#fff;padding:26px 0 22px}
.wrap{max-width:1200px;margin:0 auto;padding:0 32px}
header h1{margin:0 0 2px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header .meta{color:#aab4c6;margin:0 0 16px;font-size:13px}
.models{display:flex;flex-wrap:wrap;gap:10px}
.model{background:#243044;border:1px solid #33415a;border-radius:8px;padding:8px 12px;font-size:13px;
max-width:380px}
.model .name{font-weight:650;font-size:14.5px}
.model .facts{color:#c9d1de}
.model code{color:#9fb0c8;font-size:11.5px;word-break:break-all}
.swatch{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:7px;vertical-align:-1px}
nav.toc{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 20px;margin:20px 0}
nav.toc h2{font-size:14px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:0 0 6px;
border:0;padding:0}
nav.toc ol{margin:0;padding-left:22px;columns:3;column-gap:32px}
nav.toc a{color:var(--accent);text-decoration:none}
nav.toc a:hover{text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 24px 20px;
margin:20px 0}
h2{margin:0 0 12px;font-size:20px;border-bottom:1px solid var(--line);padding-bottom:6px}
h3{font-size:15.5px;margin:14px 0 8px}
p{margin:6px 0 10px}
.note{color:var(--muted);font-size:13px}
.table-wrap{overflow-x:auto;margin:8px 0 12px}
table{border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);font-weight:600;white-space:normal;vertical-align:bottom;line-height:1.25}
table.side-by-side th:not(:first-child),table.side-by-side td:not(:first-child){min-width:110px}
.card table{width:100%}
.card th,.card td{padding:4px 5px;font-size:12.5px}
.card td.l{white-space:normal}
tr.group td{background:#f8f9fb;color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;
padding-top:7px}
.figrow{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
th.l,td.l{text-align:left}
tr.avg td{background:#f8f9fb;color:#3a4252}
tr.avg td:first-child{font-style:italic}
tr.sep td{border-top:2px solid #c9d0db}
td.best{background:var(--best);font-weight:650}
td.best::after{content:" \\2605";color:#2a8a43;font-size:11px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:16px;align-items:start}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:0}
.card h3{margin-top:2px}
.card+.card{margin-top:14px}
.grid>.card+.card{margin-top:0}
.stats{color:var(--muted);font-size:13px;margin:0 0 6px}
figure{margin:10px 0}
figure img{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:12.5px;margin-top:4px}
blockquote{margin:6px 0 10px;padding:6px 12px;border-left:3px solid var(--line);color:#39414f}
.tokens{display:flex;flex-wrap:wrap;gap:4px 2px;line-height:1.6;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13.5px}
.tok{padding:2px 3px;border-radius:3px;white-space:pre}
footer{color:var(--muted);font-size:12.5px;padding:4px 0 28px}
@media print{body{background:#fff}section,nav.toc{break-inside:avoid;border-color:#bbb}header{background:#fff;
color:#000}.model{background:#fff;border-color:#bbb}.model .facts,.model code,header .meta{color:#333}}
"""


def _esc(value: Any) -> str:
    """HTML-escaped text of `value` (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _script_hash() -> str:
    """The CSP source that allows exactly SCRIPT."""
    return "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")


# ------------------------------------------------------------------------------------------------------------
# Numbers as text.

def _float(value: float | None) -> str:
    """A number at a precision that suits its size; n/a for an undefined metric."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.1f}"
    if magnitude >= 1:
        return f"{value:.3f}" if magnitude < 10 else f"{value:.2f}"
    return f"{value:.4f}"


def _score(value: float | None) -> str:
    """A score in [0, 1] (accuracy, F1, ECE) with four decimals."""
    return "n/a" if value is None else f"{value:.4f}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _bytes(value: int | None) -> str:
    """A size in MiB or GiB."""
    if value is None:
        return "n/a"
    mib = value / 2**20
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.1f} MiB" if mib >= 1 else f"{value / 1024:.1f} KiB"


def _params(value: int | None) -> str:
    """A parameter count as 22.7M or 1.24B."""
    if value is None:
        return "n/a"
    if value >= 10**9:
        return f"{value / 1e9:.2f}B"
    if value >= 10**6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.1f}K" if value >= 1000 else str(value)


def _latency(name: str, results: dict, which: str) -> Any:
    """Latency percentile `which` (p50, p90, p99, mean) in ms, nested (latency_ms.p50) or flat (p50_ms)."""
    value = _get(results, "efficiency", "latency_ms", which)
    return value if value is not None else _get(results, "efficiency", f"{which}_ms")


def _throughput(name: str, results: dict, which: str) -> Any:
    """Throughput `which` (examples_per_s, tokens_per_s), nested under throughput or flat."""
    value = _get(results, "efficiency", "throughput", which)
    return value if value is not None else _get(results, "efficiency", which)


def _get(section: Any, *keys: str) -> Any:
    """section[k1][k2]..., or None where a level is missing."""
    for key in keys:
        if not isinstance(section, dict) or key not in section:
            return None
        section = section[key]
    return section


def _best_flags(values: list[float | None], better: str | None) -> list[bool]:
    """Which values are the best of their column ("high" or "low" is better); none if fewer than two or all tie."""
    numbers = [v for v in values if v is not None]
    if better is None or len(numbers) < 2:
        return [False] * len(values)
    best = max(numbers) if better == "high" else min(numbers)
    if all(math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0) for v in numbers):
        return [False] * len(values)
    return [v is not None and math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0) for v in values]


# ------------------------------------------------------------------------------------------------------------
# Tables.

def _table(header: list[str], rows: list[list[str]], left: int = 1, row_classes: list[str] | None = None,
           cell_classes: list[list[str]] | None = None, header_html: bool = False, css_class: str = "") -> str:
    """An HTML table; `header` is text (escaped here unless `header_html`), `rows` hold cells rendered as HTML.

    The first `left` columns are left-aligned; `row_classes` and `cell_classes` add CSS classes.
    """
    header = header if header_html else [_esc(h) for h in header]
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            classes = ["l"] if i < left else []
            if cell_classes is not None and cell_classes[r][i]:
                classes.append(cell_classes[r][i])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{cell}</td>")
        row_class = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    table_class = f' class="{css_class}"' if css_class else ""
    return (f'<div class="table-wrap"><table{table_class}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


@dataclass
class _Column:
    """A metric of a models-by-metrics table: its title, how to read it, which way is better, its format."""

    title: str
    read: Callable[[str, dict], Any]
    better: str | None = None  # "high", "low" or None (no best marked)
    show: Callable[[Any], str] = _float
    group: str = ""  # the summary's heading row above this column's row


def _at(*keys: str) -> Callable[[str, dict], Any]:
    return lambda name, results: _get(results, *keys)


def _metric_table(page: _Page, names: list[str], columns: list[_Column]) -> str:
    """One row per metric that some model has, one column per model, the best per row marked (the side-by-side)."""
    rows, classes, row_classes, group = [], [], [], ""
    for column in columns:
        values = [column.read(n, page.results[n]) for n in names]
        if all(v is None for v in values):
            continue
        if column.group != group:
            group = column.group
            rows.append([_esc(group)] + [""] * len(names))
            classes.append([""] * (len(names) + 1))
            row_classes.append("group")
        arrow = {"high": " \u2191", "low": " \u2193"}.get(column.better or "", "")
        rows.append([_esc(column.title + arrow)] + [_esc(column.show(v)) for v in values])
        classes.append([""] + ["best" if flag else "" for flag in _best_flags(values, column.better)])
        row_classes.append("")
    if not rows:
        return ""
    header = ["Metric"] + [page.swatch(n) + _esc(n) for n in names]
    return _table(header, rows, row_classes=row_classes, cell_classes=classes, header_html=True,
                  css_class="side-by-side")


def _model_table(page: _Page, names: list[str], columns: list[_Column]) -> str:
    """One row per model, one column per metric that some model has, the best per column marked."""
    values = {c.title: [c.read(n, page.results[n]) for n in names] for c in columns}
    columns = [c for c in columns if any(v is not None for v in values[c.title])]
    if not columns:
        return ""
    flags = {c.title: _best_flags(values[c.title], c.better) for c in columns}
    rows, classes = [], []
    for i, name in enumerate(names):
        rows.append([page.swatch(name) + _esc(name)] + [_esc(c.show(values[c.title][i])) for c in columns])
        classes.append([""] + ["best" if flags[c.title][i] else "" for c in columns])
    return _table(["Model"] + [c.title for c in columns], rows, cell_classes=classes)


# ------------------------------------------------------------------------------------------------------------
# Figures.

@functools.cache
def _font_families() -> tuple[str, ...]:
    """DejaVu Sans, then any installed CJK font as a fallback, so Chinese tokens and labels draw as glyphs."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in _CJK_FONTS if name in installed))


@contextmanager
def _plotting() -> Iterator[None]:
    """matplotlib settings for the report's figures; warnings about glyphs a font lacks are silenced."""
    import matplotlib

    rc = {"font.family": list(_font_families()), "font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5,
          "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
          "legend.fontsize": 8.5, "legend.frameon": False, "text.usetex": False, "svg.fonttype": "none"}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        warnings.filterwarnings("ignore", message=r".*missing from font")
        yield


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    """A matplotlib Figure (no pyplot: no global registry to leak into) with a grid of axes; (fig, axes list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _plain(text: Any) -> str:
    """Text for matplotlib: `$` would start mathtext, and a leading `_` hides a legend entry."""
    text = str(text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return struct.unpack(">II", data[16:24])


def _image(fig, alt: str, caption: str | None = None) -> str:
    """`fig` as an inline <figure> (a base64 PNG data URI, shown at CSS size); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    data = buffer.getvalue()
    width, height = _png_size(data)
    css_w, css_h = round(width * _CSS_DPI / DPI), round(height * _CSS_DPI / DPI)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    text = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" width="{css_w}" height="{css_h}" alt="{_esc(alt)}">{text}</figure>'


def _hide_unused(axes: list, used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


# ------------------------------------------------------------------------------------------------------------
# The page.

@dataclass
class _Page:
    """What every section builder needs: the report, model names in order and their colours."""

    report: dict

    @property
    def names(self) -> list[str]:
        return [model["name"] for model in self.report["models"]]

    @property
    def results(self) -> dict:
        return self.report["results"]

    def colour(self, name: str) -> str:
        return PALETTE[self.names.index(name) % len(PALETTE)]

    def swatch(self, name: str) -> str:
        return f'<span class="swatch" style="background:{self.colour(name)}"></span>'

    def having(self, section: str) -> list[str]:
        """The models that have result `section`, in report order."""
        return [n for n in self.names if self.results.get(n, {}).get(section) is not None]

    def info(self, name: str) -> dict:
        return next(model for model in self.report["models"] if model["name"] == name)


def _worst_drop(name: str, results: dict) -> float | None:
    rob = results.get("robustness")
    if not rob or not rob["perturbations"] or rob["clean"] is None:
        return None
    drops = [_drop(rob, p) for p in rob["perturbations"]]
    drops = [d for d in drops if d is not None]
    return max(drops) if drops else None


def _drop(rob: dict, perturbation: dict) -> float | None:
    if perturbation.get("drop") is not None:
        return perturbation["drop"]
    if perturbation["score"] is None or rob["clean"] is None:
        return None
    return rob["clean"] - perturbation["score"]


def _section_summary(page: _Page) -> str:
    def parameters(name: str, results: dict) -> Any:
        return _get(results, "efficiency", "parameters") or page.info(name).get("parameters")

    def group(name: str, *columns: _Column) -> list[_Column]:
        for column in columns:
            column.group = name
        return list(columns)

    columns = [
        *group("Model", _Column("Precision", lambda n, r: page.info(n).get("precision"), None, str),
               _Column("Parameters", parameters, None, _params)),
        *group("Language modelling", _Column("Perplexity", _at("lm", "perplexity"), "low"),
               _Column("Bits/byte", _at("lm", "bits_per_byte"), "low"),
               _Column("KN perplexity", _at("kneser_ney", "perplexity"), "low"),
               _Column("Pseudo-PPL", _at("pseudo_lm", "pseudo_perplexity"), "low")),
        *group("Classification", _Column("Accuracy", _at("classification", "accuracy"), "high", _score),
               _Column("Macro F1", _at("classification", "macro", "f1"), "high", _score),
               _Column("ROC-AUC", _at("classification", "roc_auc"), "high", _score)),
        *group("Tagging", _Column("Entity F1", _at("tagging", "f1"), "high", _score)),
        *group("Question answering", _Column("QA EM", _at("qa", "exact_match"), "high"),
               _Column("QA F1", _at("qa", "f1"), "high")),
        *group("Generation", _Column("BLEU", _at("generation", "bleu"), "high"),
               _Column("chrF", _at("generation", "chrf"), "high"),
               _Column("ROUGE-L", _at("generation", "rougeL"), "high")),
        *group("Multiple choice", _Column("MC acc", _at("multiple_choice", "acc"), "high", _score),
               _Column("MC acc_norm", _at("multiple_choice", "acc_norm"), "high", _score)),
        *group("Robustness and calibration", _Column("Worst drop", _worst_drop, "low", _score),
               _Column("ECE", _at("calibration", "ece"), "low", _score),
               _Column("ECE (T)", _at("calibration", "ece_after"), "low", _score)),
        *group("Efficiency", _Column("p50 ms", lambda n, r: _latency(n, r, "p50"), "low"),
               _Column("Examples/s", lambda n, r: _throughput(n, r, "examples_per_s"), "high"),
               _Column("Size", _at("efficiency", "size_bytes"), "low", _bytes)),
    ]
    table = _metric_table(page, page.names, columns)
    if not table:
        return ""
    note = ('<p class="note">The models side by side, one column each; the best value of each row is marked '
            "&#9733; (&#8593;: higher is better, &#8595;: lower is better). Worst drop: the largest fall of the "
            "robustness metric under a perturbation. ECE (T): after temperature scaling.</p>")
    return note + table + _trade_off_figure(page)


# The quality metric a trade-off plot puts on its y axis: the first one the models have (and which way is better).
_TRADE_OFF_METRICS = (("lm", "perplexity", "Perplexity", "low"), ("classification", "accuracy", "Accuracy", "high"),
                      ("tagging", "f1", "Entity F1", "high"), ("qa", "f1", "QA F1", "high"),
                      ("generation", "bleu", "BLEU", "high"), ("multiple_choice", "acc", "MC accuracy", "high"),
                      ("pseudo_lm", "pseudo_perplexity", "Pseudo-perplexity", "low"))


def _trade_off_figure(page: _Page) -> str:
    """Quality against size and against latency, one point per model (a compression comparison as a plot):
    drawn when at least two models have the same quality metric and a size."""
    def size(name: str) -> float | None:
        value = _get(page.results[name], "efficiency", "size_bytes") or _get(page.results[name], "efficiency",
                                                                              "weight_bytes")
        return value / 1e6 if value else None

    chosen = None
    for metric in _TRADE_OFF_METRICS:
        names = [n for n in page.names if _get(page.results[n], metric[0], metric[1]) is not None and size(n)]
        if len(names) >= 2:
            chosen = metric
            break
    if chosen is None:
        return ""
    section, key, label, better = chosen
    latency = {n: _latency(n, page.results[n], "p50") for n in names}
    panels = [("Size (MB: file, or weights in memory)", size)]
    if sum(v is not None for v in latency.values()) >= 2:
        panels.append(("Latency p50 (ms, batch 1)", lambda n: latency[n]))
    with _plotting():
        fig, axes = _figure(4.2 * len(panels), 3.4, 1, len(panels))
        for ax, (xlabel, x_of) in zip(axes, panels):
            for name in names:
                x, y = x_of(name), _get(page.results[name], section, key)
                if x is None:
                    continue
                ax.scatter([x], [y], s=36, color=page.colour(name), zorder=3)
                ax.annotate(_plain(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} ({'higher' if better == 'high' else 'lower'} is better)")
        return _image(fig, f"{label} against size and latency for each model",
                      f"Trade-off: {label.lower()} against size" + (" and latency" if len(panels) > 1 else "")
                      + ", one point per model.")


def _section_curves(page: _Page) -> str:
    names = [n for n in page.having("curves")
             if page.results[n]["curves"].get("train") or page.results[n]["curves"].get("validation")
             or page.results[n]["curves"].get("metrics")]
    if not names:
        return ""
    # Models from one run (a checkpoint and its int8 copy) share their curves: draw them once, named together.
    groups: list[tuple[list[str], dict]] = []
    for name in names:
        curves = page.results[name]["curves"]
        points = [curves.get(k) for k in ("train", "validation", "metrics")]
        for members, other in groups:
            if [other.get(k) for k in ("train", "validation", "metrics")] == points:
                members.append(name)
                break
        else:
            groups.append(([name], curves))
    metric_names: list[str] = []
    for _, curves in groups:
        for key in curves.get("metrics", {}):
            if key != "val_ppl" and key not in metric_names:  # val_ppl is exp(val_loss): the loss panel shows it
                metric_names.append(key)
    panels = 1 + len(metric_names)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    with _plotting():
        fig, axes = _figure(3.6 * cols if cols > 1 else 7.5, 3.1 * rows, rows, cols)
        loss_ax = axes[0]
        for members, curves in groups:
            label, colour = " / ".join(members), page.colour(members[0])
            if curves.get("train"):
                steps, values = zip(*[(p[0], p[1]) for p in curves["train"]])
                loss_ax.plot(steps, values, color=colour, lw=1.4, alpha=0.9, label=_plain(f"{label} train"))
            if curves.get("validation"):
                steps, values = zip(*[(p[0], p[1]) for p in curves["validation"]])
                loss_ax.plot(steps, values, color=colour, lw=1.6, ls="--", marker="o", ms=3.5,
                             label=_plain(f"{label} validation"))
        loss_ax.set(title="Loss", xlabel="step", ylabel="loss")
        loss_ax.legend()
        for ax, metric in zip(axes[1:], metric_names):
            for members, curves in groups:
                points = curves.get("metrics", {}).get(metric)
                if points:
                    steps, values = zip(*[(p[0], p[1]) for p in points])
                    ax.plot(steps, values, color=page.colour(members[0]), lw=1.6, marker="o", ms=3.5,
                            label=_plain(" / ".join(members)))
            ax.set(title=_plain(metric), xlabel="step")
            if len(groups) > 1:
                ax.legend()
        _hide_unused(axes, panels)
        figure = _image(fig, "training and validation curves",
                        "Training loss (solid) and validation loss (dashed) per step; validation metrics beside.")
    runs = "".join(f"<li>{page.swatch(n)}{_esc(n)}: <code>{_esc(page.results[n]['curves'].get('run', ''))}</code>"
                   "</li>" for n in names if page.results[n]["curves"].get("run"))
    return figure + (f'<p class="note">Runs:</p><ul class="note">{runs}</ul>' if runs else "")


def _window(name: str, results: dict) -> str | None:
    """The sliding window of the LM score as "max_len / stride"."""
    lm = results.get("lm", {})
    return f"{lm['max_len']} / {lm['stride']}" if "max_len" in lm and "stride" in lm else None


def _section_lm(page: _Page) -> str:
    names = [n for n in page.names
             if any(page.results.get(n, {}).get(s) for s in ("lm", "pseudo_lm", "kneser_ney"))]
    if not names:
        return ""
    columns = [
        _Column("Perplexity", _at("lm", "perplexity"), "low"),
        _Column("NLL (nats/token)", _at("lm", "nll"), "low"),
        _Column("Bits/byte", _at("lm", "bits_per_byte"), "low"),
        _Column("Tokens", _at("lm", "tokens"), None, _count),
        _Column("Window", _window, None, str),
        _Column("Pseudo-PPL", _at("pseudo_lm", "pseudo_perplexity"), "low"),
        _Column("KN order", _at("kneser_ney", "best_order"), None, _count),
        _Column("KN perplexity", _at("kneser_ney", "perplexity"), "low"),
    ]
    parts = ['<p class="note">Perplexity with a sliding window (max length / stride); the Kneser-Ney n-gram '
             "baseline is scored on the same tokens. Window: max_len / stride.</p>",
             _model_table(page, names, columns)]
    data = [(n, page.results[n]["lm"]["data"]) for n in names if _get(page.results[n], "lm", "data")]
    if data:
        parts.append('<p class="note">Text: ' + "; ".join(f"{_esc(n)}: <code>{_esc(d)}</code>" for n, d in data)
                     + "</p>")
    bars = [(n, _get(page.results[n], "lm", "perplexity"), _get(page.results[n], "kneser_ney", "perplexity"))
            for n in names]
    bars = [b for b in bars if b[1] is not None or b[2] is not None]
    orders = [n for n in names if _get(page.results[n], "kneser_ney", "orders")]
    if bars and any(b[2] is not None for b in bars) or orders:
        panels = int(bool(bars)) + int(bool(orders))
        with _plotting():
            fig, axes = _figure(4.6 * panels, 3.2, 1, panels)
            if bars:
                ax = axes[0]
                width = 0.38
                for i, (name, model_ppl, kn_ppl) in enumerate(bars):
                    if model_ppl is not None:
                        ax.bar(i - width / 2, model_ppl, width, color=page.colour(name),
                               label="model" if i == 0 else None)
                    if kn_ppl is not None:
                        ax.bar(i + width / 2, kn_ppl, width, color="#b5bcc8", hatch="//", edgecolor="#7d8592",
                               label="Kneser-Ney" if i == 0 else None)
                values = [v for b in bars for v in b[1:] if v is not None]
                if min(values) > 0 and max(values) / min(values) > 20:
                    ax.set_yscale("log")
                ax.set_xticks(range(len(bars)), [_plain(b[0]) for b in bars])
                ax.set(title="Perplexity: model vs Kneser-Ney", ylabel="perplexity")
                ax.grid(axis="x", visible=False)
                ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=2)
            if orders:
                ax = axes[-1]
                for name in orders:
                    kn = page.results[name]["kneser_ney"]
                    points = sorted((int(k), v) for k, v in kn["orders"].items() if v is not None and k.isdigit())
                    if points:
                        ax.plot(*zip(*points), color=page.colour(name), marker="o", lw=1.6, label=_plain(name))
                ax.set(title="Kneser-Ney perplexity by order", xlabel="n-gram order", ylabel="perplexity")
                ax.xaxis.get_major_locator().set_params(integer=True)
                ax.legend()
            parts.append(_image(fig, "perplexity against the Kneser-Ney baseline",
                                "Lower is better. Each model's baseline uses that model's tokenization."))
    return "".join(parts)


def _confusion_figure(labels: list[str], matrix: list[list[int]], colour_name: str) -> str:
    n = len(labels)
    side = min(9.0, max(3.4, 1.4 + 0.55 * n))
    with _plotting():
        fig, (ax,) = _figure(side + 0.8, side)
        ax.grid(False)
        image = ax.imshow(matrix, cmap="Blues", aspect="equal")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ticks = list(range(n))
        ax.set_xticks(ticks, [_plain(label) for label in labels], rotation=45 if n > 4 else 0,
                      ha="right" if n > 4 else "center")
        ax.set_yticks(ticks, [_plain(label) for label in labels])
        ax.set(xlabel="predicted", ylabel="reference", title=_plain(f"Confusion matrix: {colour_name}"))
        if n <= 30:
            top = max((v for row in matrix for v in row), default=0)
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=9 if n <= 12 else 7,
                            color="white" if top and value > 0.6 * top else "#1d2330")
        return _image(fig, f"confusion matrix of {colour_name}",
                      "Rows: reference label; columns: predicted label; counts in the cells.")


def _section_classification(page: _Page) -> str:
    names = page.having("classification")
    if not names:
        return ""
    cards = []
    for name in names:
        cls = page.results[name]["classification"]
        stats = [f"accuracy <b>{_score(cls['accuracy'])}</b>"]
        for key, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
            if key in cls:
                stats.append(f"{label} <b>{_score(cls[key])}</b>")
        if "n" in cls:
            stats.append(f"n = {_count(cls['n'])}")
        parts = [f"<h3>{page.swatch(name)}{_esc(name)}</h3>", f'<p class="stats">{" · ".join(stats)}</p>']
        rows, row_classes = [], []
        for item in cls.get("per_class", []):
            rows.append([_esc(item["label"]), _score(item["precision"]), _score(item["recall"]),
                         _score(item["f1"]), _count(item["support"])])
            row_classes.append("")
        total = sum(item["support"] for item in cls.get("per_class", [])) or cls.get("n")
        for average in ("macro", "micro", "weighted"):  # the average rows, a line above the first
            if average in cls:
                avg = cls[average]
                rows.append([average, _score(avg["precision"]), _score(avg["recall"]), _score(avg["f1"]),
                             _count(total)])
                row_classes.append("avg" if row_classes and row_classes[-1].startswith("avg") else "avg sep")
        if rows:
            parts.append(_table(["Label", "Precision", "Recall", "F1", "Support"], rows, row_classes=row_classes))
        matrix = cls.get("confusion_matrix")
        if matrix:
            labels = cls.get("labels") or [item["label"] for item in cls.get("per_class", [])]
            if len(labels) != len(matrix):
                labels = [str(i) for i in range(len(matrix))]
            parts.append(_confusion_figure(labels, matrix, name))
        cards.append(f'<div class="card">{"".join(parts)}</div>')
    return f'<div class="grid">{"".join(cards)}</div>'


def _section_tagging(page: _Page) -> str:
    names = page.having("tagging")
    if not names:
        return ""
    columns = [_Column("Precision", _at("tagging", "precision"), "high", _score),
               _Column("Recall", _at("tagging", "recall"), "high", _score),
               _Column("F1", _at("tagging", "f1"), "high", _score),
               _Column("Macro F1", _at("tagging", "macro_f1"), "high", _score),
               _Column("Token accuracy", _at("tagging", "token_accuracy"), "high", _score),
               _Column("Mode", _at("tagging", "mode"), None, str)]
    parts = ['<p class="note">Entity-level scores (seqeval): an entity counts when its type and span both match.'
             "</p>", _model_table(page, names, columns)]
    cards = []
    for name in names:
        per_type = page.results[name]["tagging"].get("per_type")
        if per_type:
            rows = [[_esc(t["type"]), _score(t["precision"]), _score(t["recall"]), _score(t["f1"]),
                     _count(t["support"])] for t in per_type]
            cards.append(f'<div class="card"><h3>{page.swatch(name)}{_esc(name)}</h3>'
                         f'{_table(["Type", "Precision", "Recall", "F1", "Support"], rows)}</div>')
    if cards:
        parts.append(f'<div class="grid">{"".join(cards)}</div>')
    return "".join(parts)


def _section_qa(page: _Page) -> str:
    names = page.having("qa")
    if not names:
        return ""
    columns = [_Column("Exact match", _at("qa", "exact_match"), "high"), _Column("F1", _at("qa", "f1"), "high"),
               _Column("n", _at("qa", "n"), None, _count)]
    return ('<p class="note">Extractive QA with the official SQuAD normalisation (lower case, no punctuation or '
            "articles); the best over the reference answers.</p>" + _model_table(page, names, columns))


def _section_generation(page: _Page) -> str:
    names = page.having("generation")
    if not names:
        return ""
    columns = [_Column("BLEU", _at("generation", "bleu"), "high"),
               _Column("chrF", _at("generation", "chrf"), "high"),
               _Column("ROUGE-1", _at("generation", "rouge1"), "high"),
               _Column("ROUGE-2", _at("generation", "rouge2"), "high"),
               _Column("ROUGE-L", _at("generation", "rougeL"), "high"),
               _Column("Exact match", _at("generation", "exact_match"), "high"),
               _Column("n", _at("generation", "n"), None, _count)]
    table = _model_table(page, names, columns)
    if not table:
        return ""
    samples = []
    for name in names:  # a few outputs next to their references, when the job kept them
        rows = [r for r in page.results[name]["generation"].get("samples") or [] if isinstance(r, dict)]
        if rows:
            cell = '<td class="l" style="white-space:normal">{}</td>'
            body = "".join("<tr>" + cell.format(_esc(r.get("prediction", ""))) + cell.format(_esc(r.get("reference", "")))
                           + "</tr>" for r in rows)
            samples.append(f"<h3>{page.swatch(name)} {_esc(name)}: first outputs</h3><table><tr><th>Output</th>"
                           f"<th>Reference</th></tr>{body}</table>")
    return '<p class="note">BLEU and chrF by sacrebleu; ROUGE by rouge-score.</p>' + table + "".join(samples)


def _section_multiple_choice(page: _Page) -> str:
    names = page.having("multiple_choice")
    if not names:
        return ""
    columns = [_Column("acc", _at("multiple_choice", "acc"), "high", _score),
               _Column("acc_norm", _at("multiple_choice", "acc_norm"), "high", _score),
               _Column("n", _at("multiple_choice", "n"), None, _count),
               _Column("Shots", _at("multiple_choice", "num_fewshot"), None, _count),
               _Column("Scored by", _at("multiple_choice", "source"), None, str)]
    return ('<p class="note">The choice with the highest log-likelihood (acc) or log-likelihood per character '
            "of the choice (acc_norm), as lm-eval scores it.</p>" + _model_table(page, names, columns))


def _better_for(metric: str) -> str | None:
    """Which way an lm-eval metric improves, guessed from its name; None for a standard error."""
    lowered = metric.lower()
    if "stderr" in lowered:
        return None
    if any(word in lowered for word in ("perplexity", "ppl", "bits_per_byte", "bpb", "loss")):
        return "low"
    return "high"


def _section_lm_eval(page: _Page) -> str:
    names = page.having("lm_eval")
    if not names:
        return ""
    keys: list[tuple[str, str]] = []
    for name in names:
        for task, metrics in page.results[name]["lm_eval"].items():
            keys.extend((task, metric) for metric in metrics if (task, metric) not in keys)
    if not keys:
        return ""
    rows, classes = [], []
    for task, metric in keys:
        values = [_get(page.results[n]["lm_eval"], task, metric) for n in names]
        flags = _best_flags(values, _better_for(metric))
        rows.append([_esc(task), _esc(metric)] + [_esc(_float(v)) if v is not None else "" for v in values])
        classes.append(["", ""] + ["best" if f else "" for f in flags])
    header = ["Task", "Metric"] + [page.swatch(n) + _esc(n) for n in names]
    table = _table(header, rows, left=2, cell_classes=classes, header_html=True)
    return ('<p class="note">Scores from lm-evaluation-harness through the lmforge adapter, one column per model.'
            "</p>" + table)


def _section_robustness(page: _Page) -> str:
    names = page.having("robustness")
    if not names:
        return ""
    perturbations: list[str] = []
    for name in names:
        for item in page.results[name]["robustness"]["perturbations"]:
            if item["name"] not in perturbations:
                perturbations.append(item["name"])
    metric = next((page.results[n]["robustness"].get("metric") for n in names
                   if page.results[n]["robustness"].get("metric")), "score")
    scores = {n: {p["name"]: p for p in page.results[n]["robustness"]["perturbations"]} for n in names}
    rows = [["clean"] + [_score(page.results[n]["robustness"]["clean"]) for n in names]]
    for pert in perturbations:
        row = [_esc(pert)]
        for name in names:
            item = scores[name].get(pert)
            if item is None:
                row.append("")
                continue
            drop = _drop(page.results[name]["robustness"], item)
            row.append(_score(item["score"]) + ("" if drop is None else f" ({0.0 - drop:+.4f})"))
        rows.append(row)
    settings = []
    for name in names:
        rob = page.results[name]["robustness"]
        facts = [f"{k} {rob[k]}" for k in ("rate", "seed") if k in rob]
        if facts:
            settings.append(f"{_esc(name)}: {_esc(', '.join(facts))}")
    with _plotting():
        fig, (ax,) = _figure(min(11.0, 3.0 + 1.1 * len(perturbations) * max(1, len(names)) ** 0.5), 3.4)
        group = 0.8
        width = group / len(names)
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, pert in enumerate(perturbations):
                item = scores[name].get(pert)
                if item is not None and item["score"] is not None:
                    xs.append(j - group / 2 + width * (i + 0.5))
                    ys.append(item["score"])
            ax.bar(xs, ys, width * 0.92, color=page.colour(name), label=_plain(name))
            clean = page.results[name]["robustness"]["clean"]
            if clean is not None:
                ax.axhline(clean, color=page.colour(name), ls="--", lw=1.2)
        ax.plot([], [], color="#555", ls="--", lw=1.2, label="clean (per model)")
        crowded = len(perturbations) > 4
        ax.set_xticks(range(len(perturbations)), [_plain(p) for p in perturbations], rotation=20 if crowded else 0,
                      ha="right" if crowded else "center")
        ax.set(title=_plain(f"{metric} under perturbations"), ylabel=_plain(metric))
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure = _image(fig, "robustness: score per perturbation",
                        "Bars: the metric on perturbed inputs; dashed lines: the same model on clean inputs.")
    note = f'<p class="note">Metric: {_esc(metric)}; each cell: the score (its change from clean).'
    note += (" Settings: " + "; ".join(settings) + ".") if settings else ""
    return note + "</p>" + figure + _table(["Perturbation"] + [page.swatch(n) + _esc(n) for n in names], rows,
                                               header_html=True)


def _section_calibration(page: _Page) -> str:
    names = page.having("calibration")
    if not names:
        return ""
    columns = [_Column("ECE", _at("calibration", "ece"), "low", _score),
               _Column("MCE", _at("calibration", "mce"), "low", _score),
               _Column("Bins", _at("calibration", "n_bins"), None, _count),
               _Column("Temperature", _at("calibration", "temperature")),
               _Column("ECE after T", _at("calibration", "ece_after"), "low", _score)]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    with _plotting():
        fig, axes = _figure(3.7 * cols, 3.5 * rows, rows, cols)
        for ax, name in zip(axes, names):
            cal = page.results[name]["calibration"]
            ax.plot([0, 1], [0, 1], color="#777", ls=":", lw=1.2, label="perfect calibration")
            bins = [b for b in cal["bins"] if b["count"] > 0 and b["accuracy"] is not None]
            ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["accuracy"] for b in bins],
                   [(b["hi"] - b["lo"]) * 0.96 for b in bins], color=page.colour(name), alpha=0.75,
                   label=f"before (ECE {_score(cal['ece'])})")
            if cal.get("bins_after"):
                after = [b for b in cal["bins_after"] if b["count"] > 0 and b["accuracy"] is not None]
                temperature = f"T={cal['temperature']:.2f}, " if cal.get("temperature") is not None else ""
                ece_after = f"ECE {_score(cal['ece_after'])}" if cal.get("ece_after") is not None else ""
                ax.bar([(b["lo"] + b["hi"]) / 2 for b in after], [b["accuracy"] for b in after],
                       [(b["hi"] - b["lo"]) * 0.96 for b in after], fill=False, edgecolor="#222", lw=1.1,
                       label=f"after ({temperature}{ece_after})".replace(", )", ")"))
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=_plain(name))
            ax.set_aspect("equal")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=1)
        _hide_unused(axes, len(names))
        figure = _image(fig, "reliability diagrams",
                        "Accuracy per confidence bin (equal-width bins); on the diagonal a model is calibrated. "
                        "Outlined: after temperature scaling fitted on validation.")
    return ('<p class="note">Expected calibration error: the count-weighted mean gap between confidence and '
            "accuracy over equal-width bins; MCE: the largest gap.</p>"
            + _model_table(page, names, columns) + figure)


def _section_efficiency(page: _Page) -> str:
    names = page.having("efficiency")
    if not names:
        return ""
    columns = [_Column("Precision", lambda n, r: page.info(n).get("precision"), None, str),
               _Column("Parameters", _at("efficiency", "parameters"), None, _params),
               _Column("Size", _at("efficiency", "size_bytes"), "low", _bytes),
               _Column("Peak RSS (MiB)", _at("efficiency", "peak_rss_mib"), "low"),
               *(_Column(f"{which} ms", functools.partial(_latency, which=which), "low")
                 for which in ("p50", "p90", "p99", "mean")),
               _Column("Examples/s", functools.partial(_throughput, which="examples_per_s"), "high"),
               _Column("Tokens/s", functools.partial(_throughput, which="tokens_per_s"), "high"),
               _Column("Batch", _at("efficiency", "batch_size"), None, _count)]
    table = _model_table(page, names, columns)
    if not table:
        return ""
    parts = ['<p class="note">Latency per example (percentiles over timed runs after a warm-up); size on disk; '
             "peak resident memory of the process.</p>", table]
    def size_mib(name: str, results: dict) -> float | None:
        size = _get(results, "efficiency", "size_bytes")
        return None if size is None else size / 2**20

    readers = (("Latency p50", "ms", functools.partial(_latency, which="p50")), ("Size on disk", "MiB", size_mib),
               ("Throughput", "examples/s", functools.partial(_throughput, which="examples_per_s")))
    charts = [(title, unit, [(n, read(n, page.results[n])) for n in names]) for title, unit, read in readers]
    charts = [(t, u, [(n, v) for n, v in values if v is not None]) for t, u, values in charts]
    charts = [c for c in charts if len(c[2]) >= 2]
    if len(names) >= 2 and charts:
        with _plotting():
            fig, axes = _figure(3.7 * len(charts), 0.9 + 0.42 * len(names), 1, len(charts))
            for ax, (title, unit, values) in zip(axes, charts):
                labels = [_plain(n) for n, _ in values][::-1]
                ax.barh(labels, [v for _, v in values][::-1], color=[page.colour(n) for n, _ in values][::-1],
                        height=0.6)
                ax.set(title=title, xlabel=unit)
                ax.grid(axis="y", visible=False)
            parts.append(_image(fig, "efficiency side by side", "Latency and size: shorter is better; "
                                "throughput: longer is better."))
    return "".join(parts)


def _saliency_html(tokens: list[str], scores: list[float]) -> str:
    """Tokens as spans shaded by score: red where it pushes toward the target, blue where against."""
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(tokens, scores):
        alpha = 0.08 + 0.72 * abs(score) / top
        rgb = "214,39,40" if score >= 0 else "31,119,180"
        spans.append(f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" '
                     f'title="{_esc(f"{score:.4g}")}">{_esc(token)}</span>')
    return f'<div class="tokens">{"".join(spans)}</div>'


def _tick_step(n: int) -> int:
    return 1 if n <= 48 else math.ceil(n / 48)


def _section_interpretability(page: _Page) -> str:
    names = page.having("interpretability")
    if not names:
        return ""
    parts = ['<p class="note">Saliency: gradient &times; input per token (red: towards the target, blue: '
             "against; hover a token for its score). Attention: rows attend to columns.</p>"]
    for name in names:
        interp = page.results[name]["interpretability"]
        tokens = interp["tokens"]
        card, figures = [f"<h3>{page.swatch(name)}{_esc(name)}</h3>"], []
        if interp.get("text"):
            card.append(f"<blockquote>{_esc(interp['text'])}</blockquote>")
        saliency = interp.get("saliency")
        if saliency:
            target = saliency.get("target_name")
            card.append(f'<p class="stats">Saliency{" for " + _esc(target) if target else ""}:</p>')
            card.append(_saliency_html(tokens, saliency["scores"]))
            n = len(tokens)
            with _plotting():
                fig, (ax,) = _figure(min(11.0, max(4.5, 1.5 + 0.28 * n)), 2.9)
                scores = saliency["scores"]
                ax.bar(range(n), scores, color=["#d62728" if s >= 0 else "#1f77b4" for s in scores], width=0.8)
                ax.axhline(0, color="#444", lw=0.8)
                step = _tick_step(n)
                ax.set_xticks(range(0, n, step), [_plain(t) for t in tokens[::step]], rotation=60, ha="right",
                              fontsize=8.5 if n <= 32 else 7)
                ax.set(title=_plain(f"Saliency: {name}"), ylabel="gradient × input")
                ax.grid(axis="x", visible=False)
                figures.append(_image(fig, f"saliency per token of {name}"))
        attention = interp.get("attention")
        if attention:
            n = len(tokens)
            head = "mean over heads" if attention["head"] == "mean" else f"head {attention['head']}"
            with _plotting():
                side = min(9.0, max(4.0, 1.6 + 0.22 * n))
                fig, (ax,) = _figure(side + 0.9, side)
                ax.grid(False)
                image = ax.imshow(attention["matrix"], cmap="viridis", aspect="equal", vmin=0)
                fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
                step = _tick_step(n)
                size = 8.5 if n <= 24 else 7 if n <= 48 else 6
                labels = [_plain(t) for t in tokens[::step]]
                ax.set_xticks(range(0, n, step), labels, rotation=90, fontsize=size)
                ax.set_yticks(range(0, n, step), labels, fontsize=size)
                ax.set(xlabel="attended token (key)", ylabel="token (query)",
                       title=_plain(f"Attention: {name}, layer {attention['layer']}, {head}"))
                figures.append(_image(fig, f"attention map of {name}, layer {attention['layer']}, {head}"))
        if figures:
            card.append(f'<div class="figrow">{"".join(figures)}</div>')
        parts.append(f'<div class="card">{"".join(card)}</div>')
    return "".join(parts)


_SECTIONS: tuple[tuple[str, str, Callable[[_Page], str]], ...] = (
    ("summary", "Summary", _section_summary),
    ("curves", "Training curves", _section_curves),
    ("language-modelling", "Language modelling", _section_lm),
    ("classification", "Classification", _section_classification),
    ("tagging", "Tagging", _section_tagging),
    ("qa", "Question answering", _section_qa),
    ("generation", "Generation", _section_generation),
    ("multiple-choice", "Multiple choice", _section_multiple_choice),
    ("lm-eval", "lm-eval", _section_lm_eval),
    ("robustness", "Robustness", _section_robustness),
    ("calibration", "Calibration", _section_calibration),
    ("efficiency", "Efficiency", _section_efficiency),
    ("interpretability", "Interpretability", _section_interpretability),
)
SECTION_IDS = tuple(section_id for section_id, _, _ in _SECTIONS)


def _model_card(page: _Page, model: dict) -> str:
    facts = [model[k] for k in ("task", "kind", "precision") if model.get(k)]
    if model.get("parameters") is not None:
        facts.append(f"{_params(model['parameters'])} parameters")
    if isinstance(model.get("pruning"), dict):  # `lmforge prune`'s record: the method and how much
        p = model["pruning"]
        how = (f"heads {p.get('heads', 0):.0%}, FFN {p.get('ffn', 0):.0%}" if p.get("method") == "structured"
               else f"{p.get('sparsity', 0):.0%} sparse")
        facts.append(f"pruned ({p.get('method')}, {how})")
    path = f"<br><code>{_esc(model['path'])}</code>" if model.get("path") else ""
    return (f'<div class="model"><span class="name">{page.swatch(model["name"])}{_esc(model["name"])}</span>'
            f'<div class="facts">{_esc(" · ".join(str(f) for f in facts))}</div>{path}</div>')


def render_html(report: dict) -> str:
    """The self-contained HTML page of a report (validated first): header, contents, a section per result kind."""
    validate(report)
    page = _Page(report)
    sections = []
    for section_id, title, build in _SECTIONS:
        body = build(page)
        if body:
            sections.append((section_id, title, body))
    title = report["title"] or "Evaluation report"
    count = len(report["models"])
    meta = (f"{_esc(report['created'])} · lmforge {_esc(report['lmforge_version'])} · {count} "
            f"model{'s' if count != 1 else ''}")
    toc = "".join(f'<li><a href="#{sid}">{_esc(t)}</a></li>' for sid, t, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{_esc(t)}</h2>\n{b}\n</section>' for sid, t, b in sections)
    if not sections:
        body = ('<section id="empty"><h2>No results</h2><p class="note">This report has no results yet.</p>'
                "</section>")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{_script_hash()}'; "
           "base-uri 'none'; form-action 'none'")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="generator" content="lmforge {_esc(report['lmforge_version'])}">
<title>{_esc(title)}</title>
<style>{STYLE}</style>
<script>{SCRIPT}</script>
</head>
<body>
<header><div class="wrap">
<h1>{_esc(title)}</h1>
<p class="meta">{meta}</p>
<div class="models">{"".join(_model_card(page, m) for m in report["models"])}</div>
</div></header>
<div class="wrap">
<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>
<main>
{body}
</main>
<footer>Written by lmforge {_esc(report['lmforge_version'])} from report.json (schema {_esc(SCHEMA)}).
Self-contained: the figures are inline and the page loads nothing else.</footer>
</div>
</body>
</html>
"""


def write_html(report: dict, folder: str | os.PathLike) -> Path:
    """Render `report` and write it to `folder`/report.html atomically; return the file's path."""
    text = render_html(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(folder / HTML_FILE, text.encode("utf-8"))


__all__ = ["DPI", "HTML_FILE", "PALETTE", "SECTION_IDS", "render_html", "write_html"]
