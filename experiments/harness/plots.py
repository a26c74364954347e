"""Figures: a saved-on-exit matplotlib canvas and seed-mean curves with bands."""
from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, figsize=(6, 4), dpi: int = 120):
    """(fig, axes) to draw on; saved to `path` as PNG on exit. axes is one
    Axes for a 1x1 grid, else an [nrows, ncols] array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=nrows * ncols == 1)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_curves(path: str, title: str, arms: dict[str, list[list[tuple[int, float]]]],
                ylabel: str, log_y: bool = False, band: str = "ci") -> None:
    """One line per arm: mean over seeds; band = 95% t interval of the mean
    ("ci") or min..max over seeds ("range")."""
    from experiments.harness import stats

    with figure(path) as (_, ax):
        for name, runs in arms.items():
            steps = [s for s, _ in runs[0]]
            values = np.array([[v for _, v in run] for run in runs])
            if band == "ci" and len(runs) > 1:
                lo, hi = np.array([stats.mean_ci(values[:, i])["ci95"]
                                   for i in range(len(steps))]).T
            else:
                lo, hi = values.min(0), values.max(0)
            ax.plot(steps, values.mean(0), label=name)
            ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"{title}\n(mean over seeds, {'95% CI' if band == 'ci' else 'min-max'} band)",
                     fontsize=10)
        ax.legend(fontsize=8)

