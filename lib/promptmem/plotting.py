"""One figure style for every notebook, and `save_figure`: PNG + PDF into figures/, with the data as CSV."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd

STYLE = {
    "figure.dpi": 110,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "pdf.fonttype": 42,  # editable text in the PDF
}
LABEL_STYLE = {"true": "-", "random": "--"}  # true labels solid, the random-label control dashed


def use_style() -> None:
    mpl.rcParams.update(STYLE)


def log_axes(ax: plt.Axes, xticks=None, yticks=None) -> None:
    """Log scale on the axes given ticks, labelled with those values as plain numbers and spanning all of them
    (the grids of n, N and p are short, and the whole grid tried should show)."""
    for axis, ticks, set_scale, set_limits in ((ax.xaxis, xticks, ax.set_xscale, ax.set_xlim),
                                               (ax.yaxis, yticks, ax.set_yscale, ax.set_ylim)):
        if ticks is None:
            continue
        ticks = sorted(set(ticks))
        set_scale("log")
        axis.set_major_locator(mpl.ticker.FixedLocator(ticks))
        axis.set_major_formatter(mpl.ticker.ScalarFormatter())
        axis.set_minor_locator(mpl.ticker.NullLocator())
        set_limits(ticks[0] / 1.15, ticks[-1] * 1.15)


def save_figure(fig: plt.Figure, name: str, table: pd.DataFrame, figures_dir: str | os.PathLike = "figures") -> None:
    """Write `name`.png, `name`.pdf and `name`.csv (the numbers plotted) into figures_dir.

    PDF metadata carries no creation date, so regenerating an unchanged figure leaves the file unchanged.
    """
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", metadata={"Software": None})
    fig.savefig(folder / f"{name}.pdf", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    table.to_csv(folder / f"{name}.csv", index=False)
