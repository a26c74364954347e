"""MOESART vs other k-sparse routers at the same k.

Claim (MOESART): a router that, in training, samples k experts from the
softmax and weights them by adjusted logits (a k-sparse estimate of the
dense softmax mixture with small bias) reaches a lower out-of-sample loss
than top-k, V-MoE, expert choice and X-MoE routers at the same k.

Setup, k=2 of E=8 experts everywhere:
- Synthetic: K=8 clusters (separation 1, noise 0.5), each with its own tanh
  target (16 units); one residual MoE layer routing the raw inputs, experts
  of 16 hidden units, no capacity limit for token-choice routers (expert
  choice: capacity factor 2, i.e. 2 experts per token on average); Adam.
  Out-of-sample loss: MSE on 4096 fresh points.
- Tiny T5-MoE: the second layer of each stack is an MoE layer (as in
  Switch) with experts of d_ff=64; the router under test in both, except
  that the expert choice arm uses top-2 in the decoder (expert choice would
  see future tokens there). Token-choice capacity factor 1.25 in training,
  2.0 in evaluation. Out-of-sample loss: eval loss on held-out documents.
MOESART uses its defaults, the authors' gate (Gumbel-top-k sampling without
replacement, 'small_random' adjusted-logit weights, trimmed lasso, the k
most probable experts with weight 1/k in evaluation); two synthetic-only
arms vary one choice each (sampling with replacement; weights = the raw
probabilities). V-MoE uses top-k in the T5 decoder (its batch priority
looks at later tokens).
"""
from __future__ import annotations

import dataclasses
import os

from experiments.common import (ClusterTask, fmt, mean_std, parse_args, plot_curves, run_arms,
                                run_t5, slug, t5_config, train_synthetic, with_moe,
                                write_results)
from moejax.routing import RouterConfig

NAME = "moesart"
E, K = 8, 2
# arm: (router, RouterConfig overrides); the MOESART variants are synthetic-only.
ARMS = {"MOESART": ("moesart", {}),
        "MOESART, with replacement": ("moesart", {"sampling": "with_replacement"}),
        "MOESART, weights = p": ("moesart", {"sample_weighting": "raw"}),
        "top-k": ("top_k", {}), "V-MoE": ("vmoe", {}), "expert choice": ("expert_choice", {}),
        "X-MoE": ("xmoe", {})}
T5_ARMS = ("MOESART", "top-k", "V-MoE", "expert choice", "X-MoE")
BASELINE = "top-k"


def router(name: str, capacity_factor: float | None, eval_capacity_factor: float | None,
           **overrides):
    if name == "expert_choice":  # C = cf T / E: cf = k gives k experts per token on average
        return RouterConfig(name, num_experts=E, capacity_factor=float(K),
                            eval_capacity_factor=float(K))
    return RouterConfig(name, num_experts=E, k=K, capacity_factor=capacity_factor,
                        eval_capacity_factor=eval_capacity_factor, **overrides)


def t5_arm(size: str, seed: int, name: str, steps: int):
    encoder = router(name, 1.25, 2.0)
    # Expert choice and V-MoE's batch priority see later tokens: top-k in the decoder.
    decoder = router("top_k", 1.25, 2.0) if name in ("expert_choice", "vmoe") else encoder
    return with_moe(t5_config(size, seed, steps=steps, evals=10, eval_batches=4),
                    encoder={"router": encoder, "d_ff": 64, "interval": 2},
                    decoder={"router": decoder, "d_ff": 64, "interval": 2})


def relative(values: list[float], baseline: float) -> str:
    return f"{100 * (mean_std(values)[0] / baseline - 1):+.1f}%"


def main():
    args = parse_args(NAME, __doc__)
    synth_steps, t5_steps = {"quick": (800, 150), "full": (4000, 2000)}[args.size]
    task = ClusterTask(widths=(16,) * 8, separation=1.0)
    synth = run_arms({arm: (lambda seed, n=name, kw=kw: train_synthetic(
        task, router(n, None, None, **kw), steps=synth_steps, seed=seed, d_ff=16))
        for arm, (name, kw) in ARMS.items()}, args.seeds, "synthetic")
    t5 = run_arms({arm: (lambda seed, arm=arm: run_t5(
        t5_arm(args.size, seed, ARMS[arm][0], t5_steps),
        os.path.join(args.out, "runs", f"{slug(arm)}_{seed}"))) for arm in T5_ARMS},
        args.seeds, "tiny T5-MoE")

    plot_curves(os.path.join(args.out, "synthetic_test_loss.png"),
                f"Clustered regression, k={K} of E={E}: test MSE",
                {a: [r.loss_curve for r in rs] for a, rs in synth.items()}, "test MSE", log_y=True)
    plot_curves(os.path.join(args.out, "t5_eval_loss.png"),
                f"Tiny T5-MoE, k={K} of E={E}: eval loss",
                {a: [r["eval"] for r in rs] for a, rs in t5.items()}, "eval loss")

    synth_loss = {a: [r.test_loss for r in rs] for a, rs in synth.items()}
    t5_loss = {a: [r["eval"][-1][1] for r in rs] for a, rs in t5.items()}
    base_s, base_t = mean_std(synth_loss[BASELINE])[0], mean_std(t5_loss[BASELINE])[0]
    rows = ["| router | synthetic test MSE | vs top-k | T5 eval loss | vs top-k |",
            "|---|---|---|---|---|"]
    for arm in ARMS:
        t5_cols = (f"{fmt(t5_loss[arm])} | {relative(t5_loss[arm], base_t)}" if arm in t5
                   else "- | -")
        rows.append(f"| {arm} | {fmt(synth_loss[arm], 4)} | {relative(synth_loss[arm], base_s)} | "
                    f"{t5_cols} |")
    table = (f"k={K} of E={E}; synthetic: K=8 clusters, {synth_steps} steps; tiny T5-MoE: "
             f"{t5_steps} steps; {args.seeds} seeds (mean ± std). 'vs top-k': relative change "
             "of the mean loss (negative = better than top-k).\n\n" + "\n".join(rows) + "\n")
    write_results(args.out, table, {
        "size": args.size, "synthetic_steps": synth_steps, "t5_steps": t5_steps,
        "synthetic": {a: [dataclasses.asdict(r) for r in rs] for a, rs in synth.items()},
        "t5": {a: [{k: r[k] for k in ("train", "eval")} for r in rs] for a, rs in t5.items()}})
    print(table)


if __name__ == "__main__":
    main()
