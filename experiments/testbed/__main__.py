"""The routing testbed: does the tiny T5-MoE beat dense on the Markov corpus?

A router comparison means something only where experts pay off. This
experiment measures that precondition on the standard testbed every
routing experiment uses (`experiments.harness.testbed.testbed_config`): the tiny
T5 (d_model 64, 2+2 layers) pretrained with span corruption on the
`markov` corpus (8 domains, each a random second-order word chain whose
8 x 32**2 contexts at `--full`, 8 x 16**2 at `--quick`, hold more than a
dense tiny model does; see moejax/data/markov.py).

Arms (paired: seed s gives every arm the same data order, and the two MoE
arms the same init):
- dense: every FFN dense, d_ff=128.
- MoE, learned router: the same model with every FFN of both stacks an MoE
  layer of E=16 experts of d_ff=64, top-2 with weights renormalised over
  the two, no capacity limit, no aux losses (equal active FLOPs:
  2 x 64 = 128 hidden units per token).
- MoE, frozen random router: the same, the router kept at its random init
  (freeze_router=True), as in Dikkala et al. 2023's baseline.

Precondition (results.json "precondition"): MoE (learned) beats dense on
the final eval loss by >= 3 paired standard errors. Claim: the learned
router beats the frozen random router the same way. The table also gives
each arm's recall (held-out words masked alone, predicted exactly), which
reads how much of the chain's table the model holds.

    python -m experiments.testbed --quick    # 3 seeds x 800 steps, ~11 minutes on 2 CPU cores
    python -m experiments.testbed --full     # 5 seeds x 5000 steps, ~1.5 hours
"""
from __future__ import annotations

import dataclasses
import functools
import os

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import plot_curves
from experiments.harness.report import slug
from experiments.harness.runs import run_t5
from experiments.harness.testbed import TESTBED_EXPERTS, TESTBED_K, testbed_config, testbed_moe

ARMS = ("dense", "MoE, learned router", "MoE, frozen random router")
DENSE, MOE, FROZEN = ARMS


def arm_config(size: str, seed: int, arm: str):
    cfg = testbed_config(size, seed)
    if arm == DENSE:
        return cfg
    cfg = testbed_moe(cfg)
    return dataclasses.replace(cfg, freeze_router=arm == FROZEN)


def arms(args):
    return {arm: (lambda seed, arm=arm: functools.partial(
        run_t5, arm_config(args.size, seed, arm),
        os.path.join(args.out, "runs", f"{slug(arm)}_{seed}"), fact_recall=True))
        for arm in ARMS}


def analyse(args, runs) -> Report:
    final = {arm: [r["eval"][-1][1] for r in rs] for arm, rs in runs.items()}
    recall = {arm: [r["recall"]["accuracy"] for r in rs] for arm, rs in runs.items()}
    pre = stats.precondition("eval_loss", final[MOE], final[DENSE])
    learned_vs_frozen = stats.paired(final[MOE], final[FROZEN])
    frozen_vs_dense = stats.paired(final[FROZEN], final[DENSE])
    claims = [stats.claim("a learned router beats a frozen random router (eval loss)",
                          pre["passed"], learned_vs_frozen)]
    cfg = testbed_config(args.size, 0)
    rows = ["| arm | eval loss (95% CI) | vs dense: paired diff (95% CI) | diff / SE "
            "| recall (95% CI) | vs dense: paired diff (95% CI) |",
            "|---|---|---|---|---|---|"]
    for arm in ARMS:
        own = stats.fmt_ci(stats.mean_ci(final[arm]), sign=False)
        own_recall = stats.fmt_ci(stats.mean_ci(recall[arm]), sign=False)
        if arm == DENSE:
            rows.append(f"| {arm} | {own} | - | - | {own_recall} | - |")
            continue
        d = stats.paired(final[arm], final[DENSE])
        rows.append(f"| {arm} | {own} | {stats.fmt_ci(d)} | {d['z']:+.1f} | {own_recall} "
                    f"| {stats.fmt_ci(stats.paired(recall[arm], recall[DENSE]))} |")
    setup = (
        f"{cfg.steps} steps of batch {cfg.batch_size} "
        f"(inputs {cfg.data.inputs_length} / targets {cfg.data.targets_length} tokens), "
        f"Markov corpus with {cfg.data.markov_words} words per domain; MoE: "
        f"E={TESTBED_EXPERTS}, top-{TESTBED_K} of d_ff={cfg.model.d_ff // TESTBED_K}. "
        "Diffs are arm - dense (negative = lower loss than dense). Recall: the fraction of "
        "held-out words (each after the first two of a document) that the model, given the "
        "word masked alone, predicts exactly (`experiments.harness.probes.t5_fact_recall`; a "
        "model that knows the chain and reads only the words before gets 0.75).")
    return Report(pre, claims, setup, [*rows, "", stats.precondition_line(pre), ""], {
        "steps": cfg.steps,
        "paired": {"learned_vs_frozen": learned_vs_frozen, "frozen_vs_dense": frozen_vs_dense},
        "final_eval_loss": final, "fact_recall": recall,
        "curves": {arm: [r["eval"] for r in rs] for arm, rs in runs.items()}})


def plots(results: dict, out: str) -> None:
    plot_curves(os.path.join(out, "eval_loss.png"), "Markov corpus, tiny T5",
                results["curves"], "eval loss (span corruption)")


EXPERIMENT = Experiment("testbed", __doc__, arms, analyse, plots)

if __name__ == "__main__":
    main(EXPERIMENT)
