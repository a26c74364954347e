"""Plot a run's metrics.jsonl to PNGs.

    python scripts/plot_metrics.py WORKDIR [--out WORKDIR/plots]

Writes loss.png (train and eval cross-entropy, and the eval loss with no
capacity limit), routing.png (dropped-token fraction, experts per token,
router aux loss), balance.png (max_violation and dead experts per MoE
layer), expert_load.png (per-layer expert load over time),
load_heatmap.png (layer x expert load over steps, as a multiple of the
balanced load) and throughput.png (tokens/s, learning rate). WORKDIR and
--out may be on any filesystem etils.epath reaches (gs://, ...).
"""
from __future__ import annotations

import argparse
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from moejax import cli  # noqa: E402
from moejax.train.metrics import read_metrics  # noqa: E402


def load(workdir: str):
    """(train rows, eval rows), each sorted by step."""
    if not (epath.Path(workdir) / "metrics.jsonl").exists():
        cli.fail(f"{workdir}/metrics.jsonl does not exist; is {workdir!r} a "
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


def save(fig, out: str, name: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    (epath.Path(out) / name).write_bytes(buffer.getvalue())


def load_heatmap(train, layers: list[str], out: str) -> None:
    """One row of panels per MoE layer: experts x steps, coloured by load x E
    (1 = the balanced share), so a collapsing or dead expert is a stripe."""
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 1.2 + 1.6 * len(layers)),
                             squeeze=False, sharex=True)
    for ax, key in zip(axes[:, 0], layers):
        steps, loads = series(train, key)
        loads = np.asarray(loads).T * np.shape(loads)[1]  # [E, steps]
        image = ax.imshow(loads, aspect="auto", origin="lower", cmap="magma",
                          extent=(steps[0], steps[-1], -0.5, loads.shape[0] - 0.5),
                          vmin=0.0, vmax=max(2.0, float(loads.max())))
        ax.set_ylabel(f"{key.removesuffix('/expert_load')}\nexpert", fontsize="small")
        fig.colorbar(image, ax=ax, label="load x E")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title("expert load per MoE layer (1 = balanced)")
    save(fig, out, "load_heatmap.png")


def main():
    with cli.input_errors(OSError):
        run()


def run():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or os.path.join(args.workdir, "plots")
    train, evals = load(args.workdir)
    epath.Path(out).mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(6, 4))
    panel(ax, train, ["cross_entropy"], "cross-entropy", ["train"])
    for key, label in (("eval_cross_entropy", "eval"),
                       ("eval_dropless_loss", "eval loss, no capacity limit")):
        x, y = series(evals, key)
        if x:
            ax.plot(x, y, "o-", label=label)
            ax.legend()
    save(fig, out, "loss.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panel(axes[0], train, ["moe/dropped_fraction"], "dropped-token fraction")
    panel(axes[1], train, ["moe/experts_per_token"], "experts per token")
    panel(axes[2], train, ["aux_loss"], "router aux loss (weighted)")
    save(fig, out, "routing.png")

    layers = sorted({k for r in train for k in r if k.endswith("/expert_load")})
    if layers:
        names = [k.removesuffix("/expert_load") for k in layers]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        panel(axes[0], train, [f"{n}/max_violation" for n in names],
              "max violation (busiest load / mean - 1)", names)
        panel(axes[1], train, [f"{n}/dead_experts" for n in names],
              "fraction of experts with no token", names)
        save(fig, out, "balance.png")

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
        save(fig, out, "expert_load.png")
        load_heatmap(train, layers, out)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panel(axes[0], train, ["tokens_per_s"], "tokens/s")
    panel(axes[1], train, ["learning_rate"], "learning rate")
    save(fig, out, "throughput.png")
    print(f"wrote {sorted(p.name for p in epath.Path(out).iterdir())} to {out}")


if __name__ == "__main__":
    main()
