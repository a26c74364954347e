"""Dynamic top-p routing vs top-2 (Huang et al. 2024).

Claim: a router that gives each token the smallest set of experts whose
probabilities sum to a threshold p matches or beats top-2 while using fewer
experts per token on average, spends more experts in lower layers, and
gives harder inputs more experts.

Setup, E=8 experts, no capacity limit (nothing is dropped, so the number of
experts a token gets is the router's choice alone); top-p arms add the
entropy loss (weight 1e-3) that keeps the router from spreading out:
- Synthetic: K=4 clusters whose targets are random tanh networks of 2, 8, 32
  and 128 units: difficulty is the target's complexity, and the per-cluster
  test loss confirms the order. Two residual MoE layers, experts of 16 hidden
  units, Adam. Reported: test MSE, experts per token overall, per layer and
  per cluster.
- Tiny T5-MoE: every layer of both stacks an MoE layer (experts d_ff=64),
  the same router everywhere. Reported: eval loss and experts per token per
  layer at the last evaluation.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments.common import (ClusterTask, figure, fmt, numeric_table, parse_args, plot_curves,
                                run_arms, run_t5, slug, t5_config, train_synthetic, with_moe,
                                write_results)
from moejax.routing import RouterConfig

NAME = "dynamic_top_p"
E = 8
WIDTHS = (2, 8, 32, 128)
ARMS = {"top-2": RouterConfig("top_k", num_experts=E, k=2, capacity_factor=None,
                              eval_capacity_factor=None),
        **{f"top-p {p}": RouterConfig("top_p", num_experts=E, threshold=p, entropy_weight=1e-3,
                                      capacity_factor=None, eval_capacity_factor=None)
           for p in (0.25, 0.4, 0.6)}}
T5_LAYERS = [f"{stack}/layers_{i}" for stack in ("encoder", "decoder") for i in range(2)]


def t5_experts_per_layer(run: dict) -> list[float]:
    return [run["last_eval"][f"eval_{layer}/experts_per_token"] for layer in T5_LAYERS]


def plot_per_layer(path: str, title: str, xlabels: list[str], arms: dict[str, np.ndarray],
                   xlabel: str) -> None:
    """One line per arm over `xlabels`: mean over seeds, band = min..max
    (arms[arm]: [seeds, len(xlabels)])."""
    with figure(path, figsize=(6, 3.8)) as (_, ax):
        x = np.arange(len(xlabels))
        for arm, values in arms.items():
            ax.plot(x, values.mean(0), marker="o", label=arm)
            ax.fill_between(x, values.min(0), values.max(0), alpha=0.2)
        ax.set_xticks(x, xlabels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("experts per token")
        ax.set_title(title)
        ax.legend()


def main():
    args = parse_args(NAME, __doc__)
    synth_steps, t5_steps = {"quick": (800, 150), "full": (4000, 2000)}[args.size]
    task = ClusterTask(widths=WIDTHS, separation=1.0)
    synth = run_arms({arm: (lambda seed, r=r: train_synthetic(task, r, steps=synth_steps,
                                                              seed=seed, layers=2, d_ff=16))
                      for arm, r in ARMS.items()}, args.seeds, "synthetic")
    t5 = run_arms({arm: (lambda seed, arm=arm, r=r: run_t5(
        with_moe(t5_config(args.size, seed, steps=t5_steps, evals=10, eval_batches=8),
                 encoder={"router": r, "d_ff": 64, "interval": 1},
                 decoder={"router": r, "d_ff": 64, "interval": 1}),
        os.path.join(args.out, "runs", f"{slug(arm)}_{seed}")))
        for arm, r in ARMS.items()}, args.seeds, "tiny T5-MoE")

    t5_layers = {a: np.array([t5_experts_per_layer(r) for r in rs]) for a, rs in t5.items()}
    # [seeds, clusters]: experts per token averaged over the two layers.
    per_cluster = {a: np.array([np.mean(r.experts_per_token_per_cluster, axis=0) for r in rs])
                   for a, rs in synth.items()}
    plot_per_layer(os.path.join(args.out, "t5_experts_per_layer.png"),
                   "Tiny T5-MoE: experts per token per layer (eval)",
                   [layer.replace("/layers_", " ") for layer in T5_LAYERS], t5_layers, "layer")
    plot_per_layer(os.path.join(args.out, "synthetic_experts_per_cluster.png"),
                   "Synthetic: experts per token by target complexity",
                   [str(w) for w in WIDTHS], per_cluster, "cluster target width (tanh units)")
    plot_curves(os.path.join(args.out, "t5_eval_loss.png"), "Tiny T5-MoE: eval loss",
                {a: [r["eval"] for r in rs] for a, rs in t5.items()}, "eval loss")
    plot_curves(os.path.join(args.out, "synthetic_test_loss.png"), "Synthetic: test MSE",
                {a: [r.loss_curve for r in rs] for a, rs in synth.items()}, "test MSE",
                log_y=True)

    rows = ["| router | synthetic test MSE | experts/token (layer 1, 2) | "
            "T5 eval loss | T5 experts/token (mean of 4 layers) |", "|---|---|---|---|---|"]
    for arm, rs in synth.items():
        layers = np.array([r.experts_per_token for r in rs])
        rows.append(f"| {arm} | {fmt([r.test_loss for r in rs], 4)} | "
                    f"{layers.mean(0)[0]:.2f}, {layers.mean(0)[1]:.2f} | "
                    f"{fmt([r['eval'][-1][1] for r in t5[arm]])} | "
                    f"{fmt(t5_layers[arm].mean(1), 2)} |")
    widths = [f"width {w}" for w in WIDTHS]
    cluster_table = numeric_table("router", widths,
                                  {a: per_cluster[a].mean(0) for a in ARMS}, 2)
    loss_table = numeric_table("router", widths, {
        a: np.mean([r.test_loss_per_cluster for r in rs], axis=0) for a, rs in synth.items()}, 4)
    layer_table = numeric_table("router", T5_LAYERS,
                                {a: v.mean(0) for a, v in t5_layers.items()}, 2)
    table = (f"E={E}, no capacity limit; synthetic: {synth_steps} steps, 2 MoE layers; tiny "
             f"T5-MoE: {t5_steps} steps, 4 MoE layers; {args.seeds} seeds (mean ± std).\n\n" +
             "\n".join(rows) +
             "\n\nSynthetic, experts per token by cluster (mean of both layers and seeds):\n\n" +
             cluster_table +
             "\n\nSynthetic, test MSE by cluster (difficulty check):\n\n" + loss_table +
             "\n\nTiny T5-MoE, experts per token per layer (eval, mean over seeds):\n\n" +
             layer_table + "\n")
    write_results(args.out, table, {
        "size": args.size, "synthetic_steps": synth_steps, "t5_steps": t5_steps,
        "widths": WIDTHS,
        "synthetic": {a: [dataclasses.asdict(r) for r in rs] for a, rs in synth.items()},
        "t5": {a: [{"train": r["train"], "eval": r["eval"],
                    "experts_per_token_per_layer": dict(zip(T5_LAYERS, t5_experts_per_layer(r)))}
                   for r in rs] for a, rs in t5.items()}})
    print(table)


if __name__ == "__main__":
    main()
