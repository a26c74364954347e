"""Plot a run's metrics.jsonl to PNGs.

    python scripts/plot_metrics.py WORKDIR [--out WORKDIR/plots]

Writes loss.png (train and eval cross-entropy), routing.png (dropped-token
fraction, experts per token, router aux loss), expert_load.png (per-layer
expert load over time) and throughput.png (tokens/s, learning rate).
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moejax.train.metrics import read_metrics  # noqa: E402


def load(workdir: str):
    """(train rows, eval rows), each sorted by step."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise SystemExit(f"{workdir}/metrics.jsonl does not exist; is {workdir!r} a "
                         "moejax.train workdir?")
    train, evals = read_metrics(workdir)
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def panel(ax, rows, keys, title, labels=None):
    for key, label in zip(keys, labels or keys):
        x, y = series(rows, key)
        if x:
            ax.plot(x, y, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or os.path.join(args.workdir, "plots")
    os.makedirs(out, exist_ok=True)
    train, evals = load(args.workdir)

    fig, ax = plt.subplots(figsize=(6, 4))
    panel(ax, train, ["cross_entropy"], "cross-entropy", ["train"])
    x, y = series(evals, "eval_cross_entropy")
    if x:
        ax.plot(x, y, "o-", label="eval")
        ax.legend()
    fig.savefig(os.path.join(out, "loss.png"), dpi=120, bbox_inches="tight")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panel(axes[0], train, ["moe/dropped_fraction"], "dropped-token fraction")
    panel(axes[1], train, ["moe/experts_per_token"], "experts per token")
    panel(axes[2], train, ["aux_loss"], "router aux loss (weighted)")
    fig.savefig(os.path.join(out, "routing.png"), dpi=120, bbox_inches="tight")

    layers = sorted({k for r in train for k in r if k.endswith("/expert_load")})
    if layers:
        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, key in zip(axes[0], layers):
            steps, loads = series(train, key)
            loads = np.asarray(loads)
            for e in range(loads.shape[1]):
                ax.plot(steps, loads[:, e], label=f"expert {e}")
            ax.set_title(key.removesuffix("/expert_load"))
            ax.set_xlabel("step")
            ax.set_ylabel("fraction of assignments")
        axes[0][-1].legend(fontsize="small")
        fig.savefig(os.path.join(out, "expert_load.png"), dpi=120, bbox_inches="tight")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panel(axes[0], train, ["tokens_per_s"], "tokens/s")
    panel(axes[1], train, ["learning_rate"], "learning rate")
    fig.savefig(os.path.join(out, "throughput.png"), dpi=120, bbox_inches="tight")
    print(f"wrote {sorted(os.listdir(out))} to {out}")


if __name__ == "__main__":
    main()
