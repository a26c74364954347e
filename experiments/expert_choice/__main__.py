"""Expert choice vs token choice at equal compute (Zhou et al. 2022).

Claim: with the same active FLOPs per token, expert-choice routing (each
expert takes its top C = 2T/E tokens of a group) trains faster than Switch
top-1 and GShard top-2, because load is balanced by construction (nothing
dropped for capacity, no balance loss) and a token can get a variable number
of experts.

Setup: the tiny T5-MoE on the embedded corpus (span corruption), every
encoder layer an MoE layer of E=8 experts; the decoder is the same dense
stack in every arm (expert choice would see future tokens there). Active
FFN FLOPs per encoder token are equal: top-1 uses experts of d_ff=128; top-2,
EC (capacity factor 2, so 2 experts per token on average) and EC-CAP (at most
2 experts per token) use d_ff=64; the dense arm is one FFN of d_ff=128.
Token-choice capacity factor 1.25 in training, 2.0 in evaluation.
Reported: the step at which each arm's mean eval loss first reaches top-1's
final eval loss (linear interpolation between evaluations), and the speed-up
against top-1; the fraction of tokens with no expert and the load of the
busiest expert (x E, so 1.0 = balanced) in the second half of training; and
expert choice's distribution of experts per token.
"""
from __future__ import annotations

import os

import numpy as np

from experiments.common import (figure, fmt, mean_curve, mean_std, numeric_table, parse_args,
                                plot_curves, run_arms, run_t5, slug, steps_to_reach, t5_config,
                                with_moe, write_results)
from moejax.routing import RouterConfig

NAME = "expert_choice"
E = 8
D_FF = 128
TOKEN_CHOICE = dict(num_experts=E, capacity_factor=1.25, eval_capacity_factor=2.0)
EXPERT_CHOICE = dict(num_experts=E, capacity_factor=2.0, eval_capacity_factor=2.0)
ARMS = {
    "dense": dict(interval=0),
    "top-1 (Switch)": dict(router=RouterConfig("switch", **TOKEN_CHOICE), d_ff=D_FF),
    "top-2 (GShard)": dict(router=RouterConfig("gshard_top2", **TOKEN_CHOICE), d_ff=D_FF // 2),
    "EC cf=2": dict(router=RouterConfig("expert_choice", **EXPERT_CHOICE), d_ff=D_FF // 2),
    "EC-CAP 2": dict(router=RouterConfig("expert_choice", max_experts_per_token=2,
                                         **EXPERT_CHOICE), d_ff=D_FF // 2),
}
BASELINE = "top-1 (Switch)"


def encoder_layers(row: dict, metric: str) -> list:
    return [v for k, v in sorted(row.items())
            if k.startswith("eval_encoder/") and k.endswith("/" + metric)]


def max_load(run: dict) -> float:
    """E x the busiest expert's share of assignments, mean over encoder layers."""
    return float(np.mean([E * max(load) for load in encoder_layers(run["last_eval"],
                                                                   "expert_load")]))


def histogram(runs: list[dict]) -> np.ndarray:
    """Fraction of eval tokens given 0..E experts, mean over encoder layers and seeds."""
    return np.mean([np.mean(encoder_layers(r["last_eval"], "experts_per_token_hist"), axis=0)
                    for r in runs], axis=0)


def plot_histograms(path: str, hists: dict[str, np.ndarray]) -> None:
    with figure(path, figsize=(6, 3.5)) as (_, ax):
        width = 0.8 / len(hists)
        for i, (arm, hist) in enumerate(hists.items()):
            ax.bar(np.arange(E + 1) + (i - (len(hists) - 1) / 2) * width, hist, width, label=arm)
        ax.set_xticks(range(E + 1))
        ax.set_xlabel("experts per token")
        ax.set_ylabel("fraction of tokens")
        ax.set_title("Encoder tokens by number of experts (eval, final step)")
        ax.legend()


def main():
    args = parse_args(NAME, __doc__)
    steps = {"quick": 300, "full": 2000}[args.size]
    runs = run_arms({arm: (lambda seed, arm=arm, moe=moe: run_t5(
        with_moe(t5_config(args.size, seed, steps=steps, evals=10, eval_batches=8),
                 encoder={"interval": 1, **moe}, decoder={"interval": 0}),
        os.path.join(args.out, "runs", f"{slug(arm)}_{seed}")))
        for arm, moe in ARMS.items()}, args.seeds, "tiny T5-MoE")

    curves = {arm: [r["eval"] for r in rs] for arm, rs in runs.items()}
    plot_curves(os.path.join(args.out, "eval_loss.png"),
                "Tiny T5-MoE span corruption at equal active FLOPs", curves, "eval loss")
    hists = {arm: histogram(runs[arm]) for arm in ("EC cf=2", "EC-CAP 2")}
    plot_histograms(os.path.join(args.out, "ec_experts_per_token.png"), hists)

    target = mean_std([c[-1][1] for c in curves[BASELINE]])[0]
    rows = ["| arm | final eval loss | steps to top-1's final loss | speed-up vs top-1 | "
            "tokens with no expert (train) | busiest expert load x E (eval) |",
            "|---|---|---|---|---|---|"]
    summary = {}
    for arm, rs in runs.items():
        reached = steps_to_reach(mean_curve(curves[arm]), target)
        moe = ARMS[arm].get("interval", 1) > 0
        summary[arm] = {
            "final_eval_loss": [c[-1][1] for c in curves[arm]],
            "steps_to_target": reached,
            "speedup": None if reached is None else steps / reached,
            "dropped_fraction": ([r["late_train"]["moe/dropped_fraction"] for r in rs]
                                 if moe else None),
            "max_load": [max_load(r) for r in rs] if moe else None}
        s = summary[arm]
        rows.append(
            f"| {arm} | {fmt(s['final_eval_loss'])} | "
            f"{'not reached' if reached is None else f'{reached:.0f}'} | "
            f"{'-' if reached is None else format(s['speedup'], '.2f') + 'x'} | "
            f"{fmt(s['dropped_fraction']) if moe else '-'} | "
            f"{fmt(s['max_load'], 2) if moe else '-'} |")
    hist_table = numeric_table("arm", [f"{n} experts" for n in range(5)] + ["5+"],
                               {a: [*h[:5], h[5:].sum()] for a, h in hists.items()}, 3)
    table = (f"Tiny T5-MoE, {steps} steps, batch 16, {args.seeds} seeds (mean ± std); target = "
             f"top-1's final eval loss {target:.3f} (steps found on the seed-mean curve).\n\n" +
             "\n".join(rows) + "\n\nExperts per encoder token at the last evaluation "
             "(mean over layers and seeds):\n\n" + hist_table + "\n")
    write_results(args.out, table, {
        "size": args.size, "steps": steps, "target": target, "summary": summary,
        "experts_per_token_hist": {a: h.tolist() for a, h in hists.items()},
        "runs": {a: [{k: r[k] for k in ("train", "eval")} for r in rs]
                 for a, rs in runs.items()}})
    print(table)


if __name__ == "__main__":
    main()
