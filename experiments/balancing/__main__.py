"""Balancing and upcycling on the routing testbed.

Two questions researchers ask of DeepSeek-era MoE recipes, on the
capacity-bound testbed (`experiments.harness.testbed.testbed_config`), with paired
seeds (seed s: the same chains, data order and init in every arm).

1. Auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3). Arms, all
   top-2 of E=16 experts of d_ff 64 in every FFN (equal active FLOPs with
   the dense d_ff 128), sigmoid scores, no capacity limit:
   - dense;
   - no balancing;
   - load-balance loss: the Switch loss, weight 1e-2 (the registered default);
   - aux-loss-free bias: a per-expert selection bias moved by 1e-3 *
     sign(mean load - load) after every step (`bias_update_rate`, Wang et
     al.'s u = 0.001).
   Claims (Wang et al.): the bias reaches a lower eval loss than the
   load-balance loss, and balances better (lower eval `max_violation`, the
   busiest expert's load over the mean load, minus 1, averaged over layers).
   Precondition: the load-balance-loss MoE beats dense on eval loss.

2. Sparse upcycling (Komatsuzaki et al. 2022). A dense model is pretrained
   for P steps; then, for U more steps each (fresh optimizer, the same
   batches):
   - dense, continued: the dense checkpoint trained on;
   - MoE, upcycled: every FFN an MoE layer of E=16 experts, each a copy of
     the dense FFN (d_ff 128), top-1 with weight 1 (equal active FLOPs;
     at step 0 it computes the dense model's function), router fresh;
   - MoE, from scratch: the same MoE from a random init.
   Claim: upcycling beats training the MoE from scratch for the same extra
   steps. Precondition: the upcycled MoE beats the dense model trained on.

    python -m experiments.balancing --quick   # 3 seeds; 800 + (400 + 400) steps: ~11 min on 2 cores
                                              # run first (trains its dense arm too)
    python -m experiments.balancing --full    # 5 seeds; 5000 steps, 2500 + 2500: ~2 hours
                                              # after the testbed's --full (README: results)
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import plot_curves
from experiments.harness.report import paired_table, slug
from experiments.harness.runs import run_t5
from experiments.harness.testbed import TESTBED_EXPERTS, testbed_config, testbed_moe, testbed_router

BIAS_RATE = 1e-3
BALANCE_WEIGHT = 1e-2
BALANCE_ARMS = ("dense", "no balancing", "load-balance loss", "aux-loss-free bias")
DENSE, NONE, LOSS, BIAS = BALANCE_ARMS
UPCYCLE_ARMS = ("dense, continued", "MoE, upcycled", "MoE, from scratch")
CONTINUED, UPCYCLED, SCRATCH = UPCYCLE_ARMS
# (pretraining P, upcycled training U) steps
UPCYCLE_STEPS = {"quick": (400, 400), "full": (2500, 2500), "smoke": (10, 10)}


def balance_config(size: str, seed: int, arm: str):
    cfg = testbed_config(size, seed)
    if arm == DENSE:
        return cfg
    extra = {LOSS: dict(load_balance_weight=BALANCE_WEIGHT),
             BIAS: dict(bias_update_rate=BIAS_RATE)}.get(arm, {})
    return testbed_moe(cfg, testbed_router(score_fn="sigmoid", **extra))


def pretrain_config(size: str, seed: int):
    return testbed_config(size, seed, steps=UPCYCLE_STEPS[size][0])


def upcycle_config(size: str, seed: int, arm: str, pretrained: str):
    cfg = testbed_config(size, seed, steps=UPCYCLE_STEPS[size][1])
    if arm == CONTINUED:
        return dataclasses.replace(cfg, init_checkpoint=pretrained)
    # Experts as wide as the dense FFN, one per token: the dense active FLOPs.
    cfg = testbed_moe(cfg, testbed_router(k=1), d_ff=cfg.model.d_ff)
    if arm == UPCYCLED:
        return dataclasses.replace(cfg, init_checkpoint=pretrained, upcycle=True)
    return cfg


def violation(run: dict) -> float:
    return float(run["last_eval"]["eval_moe/max_violation"])


def arms(args):
    runs_dir = os.path.join(args.out, "runs")
    pretrained = lambda seed: os.path.join(runs_dir, f"pretrain_{seed}")
    calls = {arm: (lambda seed, arm=arm: functools.partial(
        run_t5, balance_config(args.size, seed, arm),
        os.path.join(runs_dir, f"{slug(arm)}_{seed}"))) for arm in BALANCE_ARMS}
    calls["pretrain"] = lambda seed: functools.partial(
        run_t5, pretrain_config(args.size, seed), pretrained(seed))
    calls.update({arm: (lambda seed, arm=arm: functools.partial(
        run_t5, upcycle_config(args.size, seed, arm, pretrained(seed)),
        os.path.join(runs_dir, f"{slug(arm)}_{seed}"))) for arm in UPCYCLE_ARMS})
    return calls


def analyse(args, runs) -> Report:
    final = {arm: [r["eval"][-1][1] for r in rs] for arm, rs in runs.items()}
    maxvio = {arm: [violation(r) for r in runs[arm]] for arm in (NONE, LOSS, BIAS)}

    pre_balance = stats.precondition("eval_loss", final[LOSS], final[DENSE])
    pre_upcycle = stats.precondition("eval_loss", final[UPCYCLED], final[CONTINUED])
    claims = [
        stats.claim("the aux-loss-free bias reaches a lower eval loss than the load-balance loss",
                    pre_balance["passed"], stats.paired(final[BIAS], final[LOSS]),
                    part="balancing"),
        stats.claim("the aux-loss-free bias balances better than the load-balance loss (eval "
                    "max_violation)", pre_balance["passed"],
                    stats.paired(maxvio[BIAS], maxvio[LOSS]), part="balancing",
                    evidence=f"max_violation {np.mean(maxvio[BIAS]):.3f} vs "
                             f"{np.mean(maxvio[LOSS]):.3f} (no balancing "
                             f"{np.mean(maxvio[NONE]):.3f})"),
        stats.claim("an upcycled MoE beats the MoE trained from scratch for the same extra steps "
                    "(eval loss)", pre_upcycle["passed"],
                    stats.paired(final[UPCYCLED], final[SCRATCH]), part="upcycling"),
    ]
    cfg = testbed_config(args.size, 0)
    pre_steps, up_steps = UPCYCLE_STEPS[args.size]
    sections = [
        f"**Balancing** ({cfg.steps} steps; MoE: E={TESTBED_EXPERTS}, top-2 of d_ff "
        f"{cfg.model.d_ff // 2}, sigmoid scores, no capacity limit; load-balance weight "
        f"{BALANCE_WEIGHT:g}, bias update rate {BIAS_RATE:g}). max_violation: eval, averaged "
        "over the MoE layers (0 = balanced).", "",
        *paired_table(final, BALANCE_ARMS, LOSS, {"eval max_violation": maxvio}), "",
        stats.precondition_line(pre_balance, "balancing"), "",
        f"**Upcycling** (dense pretrained {pre_steps} steps, then {up_steps} steps each; MoE: "
        f"E={TESTBED_EXPERTS}, top-1 of d_ff {cfg.model.d_ff}).", "",
        *paired_table(final, UPCYCLE_ARMS, SCRATCH), "",
        stats.precondition_line(pre_upcycle, "upcycling"), ""]
    return Report(
        {"balancing": pre_balance, "upcycling": pre_upcycle}, claims,
        f"Routing testbed (batch {cfg.batch_size}, Markov corpus).", sections,
        {"final_eval_loss": final, "eval_max_violation": maxvio,
         "steps": {"balancing": cfg.steps, "pretrain": pre_steps, "upcycle": up_steps},
         "curves": {arm: [r["eval"] for r in rs] for arm, rs in runs.items()}})


def plots(results: dict, out: str) -> None:
    curves = results["curves"]
    plot_curves(os.path.join(out, "balancing_eval_loss.png"), "Balancing: eval loss",
                {a: curves[a] for a in BALANCE_ARMS}, "eval loss (span corruption)")
    plot_curves(os.path.join(out, "upcycling_eval_loss.png"),
                f"Upcycling: eval loss after {results['steps']['pretrain']} dense steps",
                {a: curves[a] for a in UPCYCLE_ARMS}, "eval loss (span corruption)")


# The dense-continued and upcycled runs start from their seed's pretrained checkpoint.
EXPERIMENT = Experiment("balancing", __doc__, arms, analyse, plots,
                        after={CONTINUED: "pretrain", UPCYCLED: "pretrain"})

if __name__ == "__main__":
    main(EXPERIMENT)
