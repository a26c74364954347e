"""Plot a run's metrics.jsonl to PNGs.

    python scripts/plot_metrics.py WORKDIR [--out WORKDIR/plots]

Writes
  loss.png          cross-entropy (train, eval) and the total loss (plus
                    z-loss and router aux losses: train, eval, and eval with
                    no capacity limit);
  routing.png       per MoE layer: dropped-token fraction, experts per token
                    (each layer labelled with its stack's router), weighted
                    router aux loss;
  balance.png       per MoE layer: max violation (busiest load / mean - 1)
                    and the fraction of experts given no token, on 0..1;
  expert_load.png   per MoE layer, each expert's share of the assignments,
                    from 0, with the balanced share 1/E dashed;
  load_heatmap.png  layer x expert load over steps, as a multiple of the
                    balanced load;
  throughput.png    tokens/s and the learning rate.
No axis uses an offset, so small differences are not magnified. WORKDIR and
--out may be on any filesystem etils.epath reaches (gs://, ...).
"""
from __future__ import annotations

import argparse
import io
import json
import os

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["axes.formatter.useoffset"] = False
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


def panel(ax, rows, keys, title, labels=None, ylim=None, style="-"):
    for key, label in zip(keys, labels or keys):
        x, y = series(rows, key)
        if x:
            ax.plot(x, y, style, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    if ylim:
        ax.set_ylim(*ylim)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def routers(workdir: str) -> dict[str, str]:
    """{'encoder': 'expert_choice', ...} from the run's config.json (labels)."""
    try:
        model = json.loads((epath.Path(workdir) / "config.json").read_text())["model"]
        return {stack: model[f"{stack}_moe"]["router"]["name"] for stack in ("encoder", "decoder")}
    except (OSError, KeyError, ValueError):
        return {}


def fraction_limits(rows, keys) -> tuple[float, float]:
    """0..1 with a margin, or tighter (0 to a bit over the largest value)
    when every value is small, but never an axis centred on a flat 0."""
    top = max((v for k in keys for v in series(rows, k)[1]), default=0.0)
    return (-0.02, 1.02) if top > 0.25 else (-0.005, max(0.05, 1.2 * top))


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

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panel(axes[0], train, ["cross_entropy"], "cross-entropy", ["train"])
    panel(axes[0], evals, ["eval_cross_entropy"], "cross-entropy", ["eval"], style="o-")
    panel(axes[1], train, ["loss"], "total loss (cross-entropy + z-loss + router aux)",
          ["train"])
    panel(axes[1], evals, ["eval_loss", "eval_dropless_loss"],
          "total loss (cross-entropy + z-loss + router aux)",
          ["eval", "eval, no capacity limit"], style="o-")
    save(fig, out, "loss.png")

    layers = sorted({k.removesuffix("/expert_load") for r in train for k in r
                     if k.endswith("/expert_load")})
    names = routers(args.workdir)
    labels = [f"{n} ({names[n.split('/')[0]]})" if n.split("/")[0] in names else n
              for n in layers]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    dropped = [f"{n}/dropped_fraction" for n in layers]
    panel(axes[0], train, dropped, "dropped-token fraction", labels,
          ylim=fraction_limits(train, dropped))
    panel(axes[1], train, [f"{n}/experts_per_token" for n in layers], "experts per token",
          labels)
    axes[1].set_ylim(bottom=0)
    panel(axes[2], train, ["aux_loss"], "router aux loss (weighted, all layers)")
    save(fig, out, "routing.png")

    if layers:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        panel(axes[0], train, [f"{n}/max_violation" for n in layers],
              "max violation (busiest load / mean - 1)", labels)
        axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))
        dead = [f"{n}/dead_experts" for n in layers]
        panel(axes[1], train, dead, "fraction of experts with no token", labels,
              ylim=fraction_limits(train, dead))
        save(fig, out, "balance.png")

        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, name, label in zip(axes[0], layers, labels):
            steps, loads = series(train, f"{name}/expert_load")
            loads = np.asarray(loads)
            for e in range(loads.shape[1]):
                ax.plot(steps, loads[:, e], label=f"expert {e}")
            balanced = 1.0 / loads.shape[1]
            ax.axhline(balanced, color="black", linestyle="--", linewidth=1,
                       label=f"balanced (1/{loads.shape[1]})")
            ax.set_ylim(0, max(2 * balanced, 1.1 * float(loads.max())))
            ax.set_title(label)
            ax.set_xlabel("step")
            ax.set_ylabel("share of assignments")
        axes[0][-1].legend(fontsize="small")
        save(fig, out, "expert_load.png")
        load_heatmap(train, [f"{n}/expert_load" for n in layers], out)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panel(axes[0], train, ["tokens_per_s"], "tokens/s")
    panel(axes[1], train, ["learning_rate"], "learning rate")
    save(fig, out, "throughput.png")
    print(f"wrote {sorted(p.name for p in epath.Path(out).iterdir())} to {out}")


if __name__ == "__main__":
    main()
