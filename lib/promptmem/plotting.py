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
    """The figure style; inside a Jupyter kernel (papermill's, nbval's, Colab's, JupyterLab's) also the inline backend,
    whatever MPLBACKEND says: with MPLBACKEND=Agg in a kernel's environment an executed notebook keeps no figure."""
    shell = _kernel_shell()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")  # first: the inline backend sets rcParams of its own
    mpl.rcParams.update(STYLE)


def _kernel_shell():
    """The IPython shell of the Jupyter kernel running this code, or None outside a kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if hasattr(shell, "kernel") else None


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


def plot_against_init_scale(ax: plt.Axes, summary: pd.DataFrame, metric: str, init_scales) -> None:
    """`metric` against the init scale: per random-backbone family and prompt length the mean over seeds (line) and
    the min-max spread (band); the pretrained and shuffled weights as horizontal lines with their bands. `summary`
    has the columns backbone, weights, init_scale, prompt_len and `metric`_mean / _min / _max; line style follows
    the prompt length (solid: the shortest)."""
    styles = dict(zip(sorted(summary.prompt_len.unique()), ["-", "--", ":", "-."]))
    random = summary[summary.weights == "random"]
    for color, (backbone, family) in zip(("C0", "C1", "C4"), random.groupby("backbone", sort=False)):
        for prompt_len, rows in family.groupby("prompt_len"):
            rows = rows.sort_values("init_scale")
            ax.plot(rows.init_scale, rows[f"{metric}_mean"], styles[prompt_len], marker="o", color=color,
                    label=f"{backbone}, random, p={prompt_len}")
            ax.fill_between(rows.init_scale, rows[f"{metric}_min"], rows[f"{metric}_max"], color=color, alpha=0.15,
                            lw=0)
    for color, weights in (("C2", "pretrained"), ("C3", "shuffled")):
        for prompt_len, rows in summary[summary.weights == weights].groupby("prompt_len"):
            row = rows.iloc[0]
            ax.axhline(row[f"{metric}_mean"], ls=styles[prompt_len], color=color,
                       label=f"{row.backbone}, {weights}, p={prompt_len}")
            ax.axhspan(row[f"{metric}_min"], row[f"{metric}_max"], color=color, alpha=0.08, lw=0)
    log_axes(ax, xticks=init_scales)
    ax.set_xlabel("init scale σ of the random weights")
