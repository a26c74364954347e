"""Learning to route on clustered data (Dikkala et al. 2023).

Claim: with K clusters, each with its own target function, an MoE (E >= K)
whose router is learned routes by cluster (high purity) and reaches a lower
loss than the same MoE with a frozen random router or a hash router.

Synthetic part: K=4 clusters (separation 1, noise 0.5), E=8 experts of 16
hidden units, one top-1 MoE layer routing the raw inputs, no capacity
limit; test loss, NMI between cluster and chosen expert over training, and
the cluster x expert routing matrix as heatmaps. T5 part: the tiny T5-MoE's
span-corruption loss with a learned vs a frozen top-1 router (both stacks).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments.common import (ClusterTask, figure, fmt, mean_std, parse_args, plot_curves,
                                run_arms, run_t5, t5_config, train_synthetic, with_moe,
                                write_results)
from moejax.routing import RouterConfig

NAME = "learning_to_route"
ROUTERS = {"learned": "switch", "frozen random": "frozen", "hash": "hash"}


def heatmaps(path: str, runs: dict[str, list]) -> None:
    snaps = runs["learned"][0].confusion
    with figure(path, len(runs), len(snaps), figsize=(2.2 * len(snaps), 2.2 * len(runs)),
                dpi=110) as (fig, axes):
        for r, (arm, seed_runs) in enumerate(runs.items()):
            for c, (step, table) in enumerate(seed_runs[0].confusion):
                ax = axes[r, c]
                ax.imshow(np.array(table), vmin=0, vmax=1, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"step {step}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{arm}\ncluster", fontsize=9)
                if r == len(runs) - 1:
                    ax.set_xlabel("expert", fontsize=9)
        fig.suptitle("P(expert | cluster), seed 0")


def main():
    args = parse_args(NAME, __doc__)
    steps = {"quick": 800, "full": 4000}[args.size]
    task = ClusterTask(widths=(16, 16, 16, 16), separation=1.0)
    router = lambda name: RouterConfig(name, num_experts=8, capacity_factor=None,  # noqa: E731
                                       eval_capacity_factor=None)
    synth = run_arms({arm: (lambda seed, n=name: train_synthetic(task, router(n), steps=steps,
                                                                  seed=seed, d_ff=16))
                      for arm, name in ROUTERS.items()}, args.seeds, "synthetic")
    plot_curves(os.path.join(args.out, "synthetic_test_loss.png"),
                "Clustered regression: test loss", {a: [r.loss_curve for r in rs]
                                                    for a, rs in synth.items()}, "test MSE",
                log_y=True)
    plot_curves(os.path.join(args.out, "synthetic_nmi.png"), "Routing purity (NMI cluster/expert)",
                {a: [[(s, v[0]) for s, v in r.nmi] for r in rs] for a, rs in synth.items()}, "NMI")
    heatmaps(os.path.join(args.out, "synthetic_confusion.png"), synth)

    # The trainer freezes a router with freeze_router (its initial random
    # weights never move), the same thing the 'frozen' router does in a layer.
    switch = RouterConfig("switch", num_experts=8)
    t5 = run_arms({arm: (lambda seed, frozen=frozen, arm=arm: run_t5(
        dataclasses.replace(with_moe(t5_config(args.size, seed), {"router": switch},
                                     {"router": switch}),
                            freeze_router=frozen),
        os.path.join(args.out, "runs", f"t5_{arm.split()[0]}_{seed}")))
        for arm, frozen in (("learned", False), ("frozen random", True))},
        args.seeds, "tiny T5-MoE")
    plot_curves(os.path.join(args.out, "t5_train_loss.png"),
                "Tiny T5-MoE span corruption: train cross-entropy",
                {a: [c["train"] for c in cs] for a, cs in t5.items()}, "cross-entropy")

    rows = ["| router | test MSE | NMI(cluster, expert) | final T5 eval loss |",
            "|---|---|---|---|"]
    for arm, runs in synth.items():
        t5_col = fmt([c["eval"][-1][1] for c in t5[arm]]) if arm in t5 else "-"
        rows.append(f"| {arm} | {fmt([r.test_loss for r in runs], 4)} | "
                    f"{fmt([r.nmi[-1][1][0] for r in runs])} | {t5_col} |")
    learned, frozen = (mean_std([r.test_loss for r in synth[a]])[0]
                       for a in ("learned", "frozen random"))
    table = (f"Synthetic: K=4 clusters, E=8, {steps} steps, {args.seeds} seeds (mean ± std); "
             f"tiny T5-MoE: {t5_config(args.size, 0).steps} steps.\n\n" + "\n".join(rows) +
             f"\n\nLearned / frozen test MSE: {learned / frozen:.3f}\n")
    write_results(args.out, table, {
        "size": args.size, "steps": steps,
        "synthetic": {a: [dataclasses.asdict(r) for r in rs] for a, rs in synth.items()},
        "t5": {a: [{k: c[k] for k in ("train", "eval")} for c in cs] for a, cs in t5.items()}})
    print(table)


if __name__ == "__main__":
    main()
