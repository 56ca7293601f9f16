"""A sweep's heatmaps: one PNG per measure over the grid, and the three side by side.

Imported only when a sweep ends: matplotlib takes a moment to load.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chatllm.i18n import one_line
from chatllm.sweep import METRICS, Axis, CellSummary, Metric, SweepPlan, number_text, plural

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Tried in order for each character, so a Chinese or Japanese prompt in a title renders
#: when the CJK fonts are installed (Debian's fonts-noto-cjk).
FONT_FAMILIES = ("DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK JP")


def _font_families() -> list[str]:
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    # Naming an absent family makes matplotlib log a warning for every text drawn.
    return [family for family in FONT_FAMILIES if family in installed] or ["sans-serif"]


def _layout(axes: Sequence[Axis]) -> tuple[str, list[str], str, list[str]]:
    """The heatmaps' row title and labels, column title and labels. Cells fill the grid
    row by row, as grid order (first axis outermost) lists them."""
    if not axes:
        return "", [""], "", ["base"]
    if len(axes) == 1:
        (axis,) = axes
        return "", [""], axis.name, [number_text(value) for value in axis.values]
    first, rest = axes[0], axes[1:]
    columns = [
        ", ".join(
            f"{axis.name}={number_text(value)}" for axis, value in zip(rest, combo, strict=True)
        )
        for combo in itertools.product(*(axis.values for axis in rest))
    ]
    return first.name, [number_text(value) for value in first.values], "", columns


def _tilted(labels: Sequence[str]) -> bool:
    """Whether column labels are too long to stand side by side."""
    return sum(len(label) for label in labels) > 40


def _heatmap(
    figure: Figure, panel: Axes, plan: SweepPlan, summaries: Sequence[CellSummary], metric: Metric
) -> None:
    import matplotlib
    import numpy as np

    row_title, rows, column_title, columns = _layout(plan.axes)
    grid = np.full((len(rows), len(columns)), np.nan)
    failed: set[int] = set()
    for summary in summaries:
        value = summary.measure(metric)
        if value is not None:
            grid.flat[summary.cell.index] = value
        elif summary.errors:
            failed.add(summary.cell.index)
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    share = metric.key == "distinct"  # a share reads against its whole range, 0 to 1
    image = panel.imshow(
        np.ma.masked_invalid(grid),
        cmap=colours,
        aspect="auto",
        vmin=0.0 if share else None,
        vmax=1.0 if share else None,
    )
    low, high = image.get_clim()
    for (row, column), value in np.ndenumerate(grid):
        blank = "failed" if row * len(columns) + column in failed else "—"
        # Light text on viridis's dark (low) end, dark text on its light end.
        dark = not np.isnan(value) and (high <= low or (value - low) / (high - low) < 0.6)
        panel.text(
            column,
            row,
            blank if np.isnan(value) else f"{value:.{metric.places}f}",
            ha="center",
            va="center",
            color="white" if dark else "black",
        )
    panel.set_xticks(
        range(len(columns)),
        labels=columns,
        rotation=30 if _tilted(columns) else 0,
        ha="right" if _tilted(columns) else "center",
    )
    panel.set_yticks(range(len(rows)), labels=rows)
    panel.set_xlabel(column_title)
    panel.set_ylabel(row_title)
    panel.set_title(metric.title)
    figure.colorbar(image, ax=panel)


def write_plots(plan: SweepPlan, summaries: Sequence[CellSummary]) -> list[Path]:
    """One heatmap PNG per measure, and summary.png with the three side by side."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _, rows, _, columns = _layout(plan.axes)
    width = max(4.5, 2.5 + 1.0 * len(columns))
    height = max(3.0, 2.0 + 0.5 * len(rows)) + (1.0 if _tilted(columns) else 0.0)
    prompt = one_line(plan.prompt, 60)
    subtitle = f"“{prompt}” · {plan.profile.name} · {plural(plan.repeats, 'repeat')}"
    paths = []
    with matplotlib.rc_context({"font.family": _font_families()}):
        for metric in METRICS:
            figure = Figure(figsize=(width, height), layout="constrained")
            FigureCanvasAgg(figure)
            _heatmap(figure, figure.add_subplot(), plan, summaries, metric)
            figure.suptitle(subtitle, fontsize="small")
            paths.append(plan.out / f"{metric.key}.png")
            figure.savefig(paths[-1], dpi=110)
        figure = Figure(figsize=(3 * width, height), layout="constrained")
        FigureCanvasAgg(figure)
        for metric, panel in zip(METRICS, figure.subplots(1, len(METRICS)), strict=True):
            _heatmap(figure, panel, plan, summaries, metric)
        figure.suptitle(subtitle)
        paths.append(plan.out / "summary.png")
        figure.savefig(paths[-1], dpi=110)
    return paths
