"""The report's figures: matplotlib on the Agg backend, each returned as a PNG data URI
(``data:image/png;base64,...``) so that the HTML file holds its images and opens offline.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg backend's canvas
(``FigureCanvasAgg``), not through ``pyplot``: no global backend is chosen or changed, no
display is needed, nothing opens on screen, and the caller's own matplotlib set-up is left alone.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = ("#3366aa", "#dd7722", "#339955", "#bb3344", "#7755aa", "#886644", "#cc66aa", "#777777")
DPI = 100


def _version() -> tuple[int, int]:
    major, minor = matplotlib.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25, linewidth=0.6)


def to_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str, ylabel: str = "",
         percent: bool = False, horizontal: bool = False) -> str:
    """Grouped bars: one group per label, one bar per series."""
    n = max(len(labels), 1)
    k = max(len(series), 1)
    fig = _figure(7.5, max(2.4, 0.28 * n * (1 + 0.4 * (k - 1)) + 0.8)) if horizontal else _figure(max(4.5, 0.45 * n * k + 1.5), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / k
    for j, (name, vals) in enumerate(series.items()):
        pos = [i + (j - (k - 1) / 2) * width for i in range(len(labels))]
        ys = [0.0 if v is None else (100 * v if percent else v) for v in vals]
        (ax.barh if horizontal else ax.bar)(pos, ys, width * 0.95, label=name, color=PALETTE[j % len(PALETTE)])
    if horizontal:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel + (" (%)" if percent else ""), fontsize=8)
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=30 if max((len(x) for x in labels), default=0) > 8 else 0,
                      ha="right" if max((len(x) for x in labels), default=0) > 8 else "center", fontsize=8)
        ax.set_ylabel(ylabel + (" (%)" if percent else ""), fontsize=8)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_data_uri(fig)


def histograms(edges: Sequence[float], counts: Mapping[str, Sequence[int]], title: str, xlabel: str, unit: str = "pairs") -> str:
    """Histograms over the same bins; several series are drawn as outlines (steps), one as bars."""
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for j, (name, c) in enumerate(counts.items()):
        color = PALETTE[j % len(PALETTE)]
        if len(counts) == 1:
            ax.bar(edges[:-1], c, [b - a for a, b in zip(edges, edges[1:])], align="edge", color=color, edgecolor="white")
        else:
            total = sum(c) or 1
            share = [x / total for x in c]
            ax.stairs(share, edges, label=name, color=color, linewidth=1.8)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(unit if len(counts) == 1 else f"share of {unit}", fontsize=8)
    if len(counts) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_data_uri(fig)


def boxplot(labels: Sequence[str], values: Sequence[Sequence[float]], title: str, xlabel: str) -> str:
    """Horizontal box plots, one per label, with the points drawn over them."""
    fig = _figure(7.5, max(2.4, 0.32 * len(labels) + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    # matplotlib 3.10 replaced vert=False by orientation="horizontal" (vert is deprecated from 3.11)
    horizontal = {"orientation": "horizontal"} if _version() >= (3, 10) else {"vert": False}
    ax.boxplot(values, widths=0.6, showfliers=False, medianprops={"color": PALETTE[1]}, boxprops={"color": PALETTE[0]},
               **horizontal)
    for i, vs in enumerate(values, start=1):
        # a fixed, deterministic jitter: the same report twice gives the same picture
        ys = [i + 0.18 * (((j * 7919) % 11) / 10 - 0.5) for j in range(len(vs))]
        ax.scatter(vs, ys, s=7, color=PALETTE[0], alpha=0.45, linewidths=0)
    ax.axvline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_data_uri(fig)


def heatmap(labels: Sequence[str], matrix: Sequence[Sequence[float | None]], counts: Sequence[Sequence[int]], title: str) -> str:
    """A square matrix of rates in [0, 1] (None: no data), each cell annotated with its rate
    and count when the matrix is small enough to read."""
    n = len(labels)
    size = min(9.0, max(4.0, 0.42 * n + 2.2))
    fig = _figure(size, size * 0.85)
    ax = fig.add_subplot(1, 1, 1)
    grid = [[math.nan if v is None else v for v in row] for row in matrix]
    cmap = matplotlib.colormaps["RdYlBu_r"].with_extremes(bad="#f2f2f2")
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if n <= 14:
        for i in range(n):
            for j in range(n):
                if matrix[i][j] is not None:
                    ax.text(j, i, f"{matrix[i][j]:.0%}\n{counts[i][j]}", ha="center", va="center", fontsize=6,
                            color="white" if abs(matrix[i][j] - 0.5) > 0.3 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def calibration(bins: Sequence[Mapping[str, Any]], title: str) -> str:
    """Mean ``chosen_prob`` of each bin against the share of humans who preferred the chosen
    response; the diagonal is a calibrated judge. Point size grows with the bin's count."""
    fig = _figure(4.2, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0.5, 1], [0.5, 1], color="#999999", linewidth=0.8, linestyle="--")
    pts = [(b["mean_prob"], b["human_rate"], b["n"]) for b in bins if b.get("n")]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=PALETTE[0], linewidth=1)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[20 + 8 * p[2] for p in pts], color=PALETTE[0], zorder=3)
    ax.set_xlim(0.48, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("AI chosen_prob (bin mean)", fontsize=8)
    ax.set_ylabel("humans preferring the AI's choice", fontsize=8)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_data_uri(fig)


def reliability(series: Mapping[str, Sequence[Mapping[str, Any]]], title: str) -> str:
    """Reliability diagram over [0, 1]: per series (e.g. the judge's P and the calibrated P), each
    bin's mean predicted P against the share of humans preferring the chosen response; the
    diagonal is a calibrated judge. Point size grows with the bin's count."""
    fig = _figure(4.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
    for j, (name, bins) in enumerate(series.items()):
        pts = [(b["mean_prob"], b["human_rate"], b["n"]) for b in bins if b.get("n")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=PALETTE[j], linewidth=1, label=name)
            top = max(p[2] for p in pts)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[12 + 40 * p[2] / top for p in pts], color=PALETTE[j], zorder=3)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("P(chosen is better): bin mean", fontsize=8)
    ax.set_ylabel("humans preferring the chosen response", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    _style(ax)
    return to_data_uri(fig)


def curves(panels: Sequence[Mapping[str, Any]], title: str = "", cols: int = 3) -> str:
    """Small multiples: one axis per panel ``{name, lines: {label: [(step, value)]}}``; lines
    with one point are drawn as markers (eval metrics logged once)."""
    n = max(len(panels), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.4 * cols, 2.5 * rows + (0.3 if title else 0))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (label, pts) in enumerate(panel["lines"].items()):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            style = {"marker": "o", "markersize": 3} if len(pts) < 12 else {}
            ax.plot(xs, ys, label=label or None, color=PALETTE[j % len(PALETTE)], linewidth=1.3, **style)
        ax.set_title(panel["name"], fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        if any(label for label in panel["lines"]) and len(panel["lines"]) > 1:
            ax.legend(fontsize=7, frameon=False)
        _style(ax)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.yaxis.get_offset_text().set_fontsize(7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)


def interval_bars(labels: Sequence[str], series: Mapping[str, Sequence[Mapping[str, Any] | None]], title: str,
                  ylabel: str = "", percent: bool = True, reference: float | None = None) -> str:
    """Grouped bars of estimates with their intervals: one group per label, one bar per series;
    each value is ``{"mean", "lo", "hi"}`` (None or a None mean: no bar). ``reference`` draws a
    dashed line (e.g. 50% for a win rate)."""
    n, k = max(len(labels), 1), max(len(series), 1)
    fig = _figure(max(4.5, 0.5 * n * k + 1.8), 3.1)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / k
    scale = 100.0 if percent else 1.0
    for j, (name, vals) in enumerate(series.items()):
        pos, ys, err_lo, err_hi = [], [], [], []
        for i, v in enumerate(vals):
            if v and v.get("mean") is not None:
                pos.append(i + (j - (k - 1) / 2) * width)
                ys.append(scale * v["mean"])
                err_lo.append(scale * (v["mean"] - v["lo"]))
                err_hi.append(scale * (v["hi"] - v["mean"]))
        ax.bar(pos, ys, width * 0.95, yerr=[err_lo, err_hi], capsize=3, label=name, color=PALETTE[j % len(PALETTE)],
               error_kw={"elinewidth": 1, "ecolor": "#333333"})
    if reference is not None:
        ax.axhline(scale * reference, color="#999999", linewidth=0.8, linestyle="--")
    long = max((len(x) for x in labels), default=0) > 10
    ax.set_xticks(range(len(labels)), labels, rotation=25 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""), fontsize=8)
    if percent:
        ax.set_ylim(0, 100)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_data_uri(fig)
