"""The 2026 routing frontier on the routing testbed, side by side with the
rules it replaces, with paired seeds (seed s: the same chains, data order
and init in every arm). Every MoE arm has E=16 experts of d_ff 64 in every
FFN (top-2 of them is the dense d_ff 128's active FLOPs) and no capacity
limit; experts per token are measured (eval, averaged over layers).

1. Balancing. Arms, top-2 with sigmoid scores (the DeepSeek-era recipe):
   - dense; load-balance loss (weight 1e-2); aux-loss-free bias (sign
     steps of 1e-3, Wang et al. 2024);
   - quantile balancing (Kimi K3 report, sec. 2.3.3): the bias solved
     after every step from the (k+1)-th-score cutoffs, no EMA (Megatron's
     default).
   Claims (Kimi K3 report): quantile balancing balances better (lower eval
   max_violation) than the aux-free bias and than the balance loss, at an
   eval loss no higher than the aux-free bias's. Precondition: the
   balance-loss MoE beats dense (eval loss).

2. Adaptive compute, at k = 2 (a token's budget is two experts):
   - top-2 (the testbed MoE: no aux loss);
   - null experts (MoE++, Jin et al. 2024): top-2 over 16 experts and 4
     null ones that compute nothing, so a token uses 0-2 real experts;
   - top-p 0.4 with entropy weight 1e-4 (Huang et al. 2024);
   - ReMoE (Wang et al. 2024): ReLU gates, the L1 coefficient steered to
     2 of 16 experts active on average.
   Claims: null experts reach top-2's eval loss (MoE++) with fewer real
   experts per token; ReMoE beats top-2 at its target of 2 experts per
   token (ReMoE). Precondition: top-2 beats dense.

    python -m experiments.frontier --quick   # 3 seeds, 400 steps: 8 arms, ~13 min on 2 cores
    python -m experiments.frontier --full    # 5 seeds, 5000 steps: ~4 hours run first; its
                                             # shared arms are copied from the testbed,
                                             # balancing and dynamic_top_p --full runs
"""
from __future__ import annotations

import functools
import os

import numpy as np

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import figure, plot_curves
from experiments.harness.report import paired_table, slug
from experiments.harness.runs import run_t5
from experiments.harness.testbed import TESTBED_EXPERTS, testbed_config, testbed_moe, testbed_router

# --quick trains 400 steps, not the testbed's 800: 8 arms x 3 seeds of 800
# steps took 27.4 minutes on 2 cores run first (ReMoE and top-p reserve 16
# slots a token: 2x a top-2 step), 400 steps 12.7 (2026-12-06). So the quick
# arms are not the other experiments' (800-step) runs; --full's are.
STEPS = {"quick": 400}
NULL_EXPERTS = 4
BIAS_RATE = 1e-3
BALANCE_WEIGHT = 1e-2
DENSE = "dense"
LOSS, BIAS, QUANTILE = "load-balance loss", "aux-loss-free bias", "quantile balancing"
TOP2, NULL, TOPP, REMOE = "top-2", "null experts", "top-p 0.4", "ReMoE"
BALANCE_ARMS = (LOSS, BIAS, QUANTILE)
COMPUTE_ARMS = (TOP2, NULL, TOPP, REMOE)
# The routers; the same configs as the balancing, testbed and dynamic_top_p
# experiments' arms where they share one, so that their --full runs are shared.
ROUTERS = {
    LOSS: lambda: testbed_router(score_fn="sigmoid", load_balance_weight=BALANCE_WEIGHT),
    BIAS: lambda: testbed_router(score_fn="sigmoid", bias_update_rate=BIAS_RATE),
    QUANTILE: lambda: testbed_router(score_fn="sigmoid", quantile_balancing=True),
    TOP2: lambda: testbed_router(),
    NULL: lambda: testbed_router(num_null_experts=NULL_EXPERTS),
    TOPP: lambda: testbed_router("top_p", threshold=0.4, entropy_weight=1e-4),
    REMOE: lambda: testbed_router("relu"),
}


def frontier_config(size: str, seed: int):
    """The testbed's config at this experiment's steps (STEPS)."""
    return testbed_config(size, seed, steps=STEPS.get(size))


def arm_config(size: str, seed: int, arm: str):
    cfg = frontier_config(size, seed)
    if arm == DENSE:
        return cfg
    return testbed_moe(cfg, ROUTERS[arm](), d_ff=cfg.model.d_ff // 2)


def arms(args):
    runs_dir = os.path.join(args.out, "runs")
    return {arm: (lambda seed, arm=arm: functools.partial(
        run_t5, arm_config(args.size, seed, arm), os.path.join(runs_dir, f"{slug(arm)}_{seed}")))
        for arm in (DENSE, *BALANCE_ARMS, *COMPUTE_ARMS)}


def eval_metric(run: dict, name: str) -> float:
    """An eval routing metric averaged over the MoE layers."""
    return float(run["last_eval"][f"eval_moe/{name}"])


def analyse(args, runs) -> Report:
    final = {arm: [r["eval"][-1][1] for r in rs] for arm, rs in runs.items()}
    moe = [a for a in runs if a != DENSE]
    maxvio = {a: [eval_metric(r, "max_violation") for r in runs[a]] for a in moe}
    per_token = {a: [eval_metric(r, "experts_per_token") for r in runs[a]] for a in moe}
    null_share = [eval_metric(r, "null_expert_share") for r in runs[NULL]]

    pre_balance = stats.precondition("eval_loss", final[LOSS], final[DENSE])
    pre_compute = stats.precondition("eval_loss", final[TOP2], final[DENSE])
    mv = lambda a: f"{np.mean(maxvio[a]):.3f}"
    ept = lambda a: f"{np.mean(per_token[a]):.2f}"
    claims = [
        stats.claim("quantile balancing balances better than the aux-loss-free bias (eval "
                    "max_violation)", pre_balance["passed"],
                    stats.paired(maxvio[QUANTILE], maxvio[BIAS]), part="balancing",
                    evidence=f"max_violation {mv(QUANTILE)} vs {mv(BIAS)}"),
        stats.claim("quantile balancing balances better than the load-balance loss (eval "
                    "max_violation)", pre_balance["passed"],
                    stats.paired(maxvio[QUANTILE], maxvio[LOSS]), part="balancing",
                    evidence=f"max_violation {mv(QUANTILE)} vs {mv(LOSS)}"),
        stats.claim("quantile balancing reaches an eval loss no higher than the aux-loss-free "
                    "bias", pre_balance["passed"], stats.paired(final[QUANTILE], final[BIAS]),
                    part="balancing"),
        stats.claim("null experts reach top-2's eval loss", pre_compute["passed"],
                    stats.paired(final[NULL], final[TOP2]), part="adaptive compute",
                    evidence=f"real experts per token {ept(NULL)} vs {ept(TOP2)}"),
        stats.claim("null experts use fewer real experts per token than top-2",
                    pre_compute["passed"], stats.paired(per_token[NULL], per_token[TOP2]),
                    part="adaptive compute",
                    evidence=f"null share of choices {np.mean(null_share):.3f}"),
        stats.claim("ReMoE beats top-2 at its target of 2 experts per token (eval loss)",
                    pre_compute["passed"], stats.paired(final[REMOE], final[TOP2]),
                    part="adaptive compute",
                    evidence=f"experts per token {ept(REMOE)} vs {ept(TOP2)}"),
    ]
    extras = {"experts per token": per_token, "eval max_violation": maxvio}
    cfg = frontier_config(args.size, 0)
    common = (f"{cfg.steps} steps; E={TESTBED_EXPERTS} experts of d_ff {cfg.model.d_ff // 2}, "
              "no capacity limit")
    sections = [
        f"**Balancing** ({common}; top-2, sigmoid scores; balance-loss weight "
        f"{BALANCE_WEIGHT:g}, bias sign step {BIAS_RATE:g}, quantile balancing without EMA). "
        "Experts per token and max_violation (the busiest expert's load over the mean, minus "
        "1): eval, averaged over the MoE layers.", "",
        *paired_table(final, (DENSE, *BALANCE_ARMS), LOSS, extras), "",
        stats.precondition_line(pre_balance, "balancing"), "",
        f"**Adaptive compute** ({common}; softmax scores, no aux loss but top-p's entropy "
        f"loss and ReMoE's L1; null experts: {NULL_EXPERTS} beside the {TESTBED_EXPERTS}, "
        f"{np.mean(null_share):.3f} of the choices null at eval). Experts per token counts real "
        "experts.", "",
        *paired_table(final, (DENSE, *COMPUTE_ARMS), TOP2, extras), "",
        stats.precondition_line(pre_compute, "adaptive compute"), ""]
    return Report(
        {"balancing": pre_balance, "adaptive compute": pre_compute}, claims,
        f"Routing testbed (batch {cfg.batch_size}, Markov corpus).", sections,
        {"final_eval_loss": final, "eval_max_violation": maxvio,
         "eval_experts_per_token": per_token, "eval_null_expert_share": null_share,
         "steps": cfg.steps,
         "curves": {arm: [r["eval"] for r in rs] for arm, rs in runs.items()}})


def plots(results: dict, out: str) -> None:
    curves = results["curves"]
    plot_curves(os.path.join(out, "balancing_eval_loss.png"), "Balancing: eval loss",
                {a: curves[a] for a in (DENSE, *BALANCE_ARMS)}, "eval loss (span corruption)")
    plot_curves(os.path.join(out, "adaptive_eval_loss.png"), "Adaptive compute: eval loss",
                {a: curves[a] for a in (DENSE, *COMPUTE_ARMS)}, "eval loss (span corruption)")
    # Quality against compute: every seed's point, per arm.
    with figure(os.path.join(out, "loss_vs_experts_per_token.png"), figsize=(7, 4.5)) as (_, ax):
        for arm in COMPUTE_ARMS + BALANCE_ARMS:
            ax.scatter(results["eval_experts_per_token"][arm], results["final_eval_loss"][arm],
                       label=arm, s=30, marker="o" if arm in COMPUTE_ARMS else "x")
        ax.axhline(float(np.mean(results["final_eval_loss"][DENSE])), color="k", ls="--", lw=1,
                   label="dense, mean (top-2's FLOPs)")
        ax.set_xlabel("real experts per token (eval, mean over MoE layers)")
        ax.set_ylabel(f"eval loss at step {results['steps']}")
        ax.set_title("Quality against compute (one point per seed)", fontsize=10)
        ax.legend(fontsize=8)


EXPERIMENT = Experiment("frontier", __doc__, arms, analyse, plots)

if __name__ == "__main__":
    main(EXPERIMENT)
