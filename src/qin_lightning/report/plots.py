"""The report's two figures (PNG bytes): best AUC per row, and validation AUC by epoch per row.

Each row is ``(label, paper AUC or None, best AUCs of its runs, per-run validation AUC histories)``.
"""

from __future__ import annotations

import io
import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ReportRow = tuple[str, float | None, list[float], list[list[float]]]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    return buf.getvalue()


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def render_chart(rows: list[ReportRow], title: str) -> bytes:
    """Mean best validation AUC per row with std error bars, and one paper marker on each row that is a paper
    experiment; the legend outside the axes and the row names below them, so that neither covers a bar."""
    return _png(chart_figure(rows, title))


def chart_figure(rows: list[ReportRow], title: str) -> Figure:
    """The figure of render_chart."""
    plt = _pyplot()
    shown = [row for row in rows if row[2]]
    stats = [_mean_std(aucs) for _, _, aucs, _ in shown]
    lines = max((label.count(" ") + 1 for label, _, _, _ in shown), default=1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(shown) + 3.5), 4.5 + 0.3 * lines))
    xs = list(range(len(shown)))
    ax.bar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="#4C72B0", label="ours")
    paper = [(i, value) for i, (_, value, _, _) in enumerate(shown) if value is not None]
    if paper:
        ax.scatter([i for i, _ in paper], [v for _, v in paper], marker="_", s=400, color="#C44E52",
                   label="paper (same composed model)", zorder=3)
    ax.set_xticks(xs, [label.replace(" ", "\n") for label, _, _, _ in shown], rotation=30, ha="right", fontsize="small")
    lows = [m - s for m, s in stats] + [v for _, v in paper]
    ax.set_ylim(max(0.0, min(lows, default=0.5) - 0.05), 1.0)
    ax.set_ylabel("best validation AUC")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    fig.tight_layout()
    return fig


def render_curves(rows: list[ReportRow], title: str) -> bytes:
    """Validation AUC by epoch, one line per row: mean over the runs that reached the epoch, band = +- std."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11.0, 5.0))
    colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for i, (label, _, _, histories) in enumerate(row for row in rows if row[3]):
        epochs = range(max(len(h) for h in histories))
        stats = [_mean_std([h[e] for h in histories if e < len(h) and math.isfinite(h[e])]) for e in epochs]
        mean = [m for m, _ in stats]
        color = colors(i % colors.N)
        ax.plot(list(epochs), mean, marker="o", markersize=3, color=color, label=f"{label} ({len(histories)})")
        ax.fill_between(list(epochs), [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.15)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"{title}: validation AUC by epoch (mean over runs, band ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _png(fig)
