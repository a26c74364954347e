"""Expert choice vs token choice at equal compute (Zhou et al. 2022).

Claim: at the same active FLOPs per token, expert-choice routing (each
expert takes its top C = 2T/E tokens of a group) reaches GShard top-2's
final loss in at most half the steps (the paper: > 2x faster convergence),
with balanced load and no token dropped for capacity.

Setup: the routing testbed (`experiments.harness.testbed.testbed_config`), and in
every MoE arm the same experts: E=16 of d_ff 64 in every FFN of both
stacks. Only the encoder's router changes between arms; the decoder routes
with the testbed's top-2 in every MoE arm (expert choice is not causal, so
it cannot route the decoder). Encoder tokens are routed in groups of 512
(4 groups per batch), so capacities and imbalance are those of hundreds of
tokens. Arms:
- dense: d_ff 128 everywhere (the precondition's baseline).
- top-1 (Switch): capacity factor 1.25 train / 2.0 eval, load-balance loss
  0.01: half the active FLOPs of the others.
- top-2 (GShard): the same capacities and loss (equal compute: 2 x 64).
- EC cf=2: expert choice at capacity factor 2 (2 experts per token on
  average), no balance loss.
- EC-CAP 2: expert choice as in section 3.3 of the paper (the entropic LP,
  at most 2 experts per token; see moejax/routing/expert_choice.py).

Speed-up of an arm (per seed): top-2's step count divided by the step at
which the arm's eval curve first reaches top-2's final eval loss (linear
between evaluations; an arm that never reaches it counts as 1.0, an upper
bound). All arms share the testbed's wsd schedule, whose cooldown over the
last quarter lowers every curve late: a speed-up can show only if the arm
reaches the target before the cooldown, so measured speed-ups are
conservative (a cooldown-matched comparison would train the arm for half
the steps with its own cooldown; `--full` does not do that either).

Precondition: top-2 (GShard) beats dense by >= 3 paired SE.

    python -m experiments.expert_choice --quick   # 3 seeds x 800 steps, ~12 minutes on 2 CPU cores
    python -m experiments.expert_choice --full    # 5 seeds x 5000 steps, ~85 minutes

`--quick` trains the testbed's quick size (800 steps on a table of 16
words a domain): its MoE's lead over dense is smaller than at `--full`
(5000 steps, 32 words), where the table is larger and learned for longer.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import figure, plot_curves
from experiments.harness.probes import encoder_layers
from experiments.harness.report import numeric_table, slug, steps_to_reach
from experiments.harness.runs import run_t5
from experiments.harness.testbed import (
    TESTBED_EXPERTS,
    testbed_config,
    testbed_moe,
    testbed_router,
    with_moe,
)

E = TESTBED_EXPERTS
GROUP = 512
TOKEN_CHOICE = dict(capacity_factor=1.25, eval_capacity_factor=2.0, load_balance_weight=0.01,
                    normalize_weights=False)
EXPERT_CHOICE = dict(capacity_factor=2.0, eval_capacity_factor=2.0, k=1)
ROUTERS = {
    "top-1 (Switch)": testbed_router("switch", k=1, **TOKEN_CHOICE),
    "top-2 (GShard)": testbed_router("gshard_top2", k=2, **TOKEN_CHOICE),
    "EC cf=2": testbed_router("expert_choice", **EXPERT_CHOICE),
    "EC-CAP 2": testbed_router("expert_choice", max_experts_per_token=2, **EXPERT_CHOICE),
}
ARMS = ("dense", *ROUTERS)
BASELINE = "top-2 (GShard)"
SPEEDUP_CLAIMED = 2.0


def arm_config(size: str, seed: int, arm: str):
    cfg = testbed_config(size, seed, evals=10)
    if arm == "dense":
        return cfg
    d_ff = cfg.model.d_ff // 2  # the same experts in every arm
    cfg = testbed_moe(cfg, d_ff=d_ff)
    return with_moe(cfg, encoder=dict(router=ROUTERS[arm], group_size=GROUP))


def max_load(run: dict) -> float:
    """E x the busiest expert's share of assignments (eval), mean over encoder layers."""
    return float(np.mean([E * max(load) for load in encoder_layers(run["last_eval"],
                                                                   "expert_load")]))


def dropped(run: dict) -> float:
    """Fraction of encoder tokens with no expert (eval), mean over layers."""
    return float(np.mean(encoder_layers(run["last_eval"], "dropped_fraction")))


def histogram(runs: list[dict]) -> np.ndarray:
    """Fraction of eval tokens given 0..E experts, mean over encoder layers and seeds."""
    return np.mean([np.mean(encoder_layers(r["last_eval"], "experts_per_token_hist"), axis=0)
                    for r in runs], axis=0)


def speedups(runs: dict[str, list[dict]], steps: int) -> dict[str, list[float]]:
    """Per arm, per seed: steps / steps to reach the baseline's final loss (same seed)."""
    out = {}
    for arm, rs in runs.items():
        out[arm] = []
        for r, base in zip(rs, runs[BASELINE]):
            reached = steps_to_reach(r["eval"], base["eval"][-1][1])
            out[arm].append(1.0 if reached is None else steps / max(reached, 1.0))
    return out


def plot_histograms(path: str, hists: dict[str, np.ndarray]) -> None:
    with figure(path, figsize=(6, 3.5)) as (_, ax):
        width = 0.8 / len(hists)
        shown = 6
        for i, (arm, hist) in enumerate(hists.items()):
            ax.bar(np.arange(shown) + (i - (len(hists) - 1) / 2) * width,
                   [*hist[:shown - 1], hist[shown - 1:].sum()], width, label=arm)
        ax.set_xticks(range(shown), [*map(str, range(shown - 1)), f"{shown - 1}+"])
        ax.set_xlabel("experts per token")
        ax.set_ylabel("fraction of tokens")
        ax.set_title("Encoder tokens by number of experts (eval, final step)")
        ax.legend()


def arms(args):
    return {arm: (lambda seed, arm=arm: functools.partial(
        run_t5, arm_config(args.size, seed, arm),
        os.path.join(args.out, "runs", f"{slug(arm)}_{seed}"))) for arm in ARMS}


def analyse(args, runs) -> Report:
    steps = arm_config(args.size, 0, "dense").steps
    final = {arm: [r["eval"][-1][1] for r in rs] for arm, rs in runs.items()}
    pre = stats.precondition("eval_loss", final[BASELINE], final["dense"])
    speed = speedups(runs, steps)
    log_speed = {arm: np.log(v) for arm, v in speed.items()}
    claims = []
    for ec in ("EC cf=2", "EC-CAP 2"):
        # log speed-up - log 2 > 0 <=> speed-up > 2 (a one-sample t interval
        # on the log ratio; paired: both come from the same seed's runs).
        claims.append(stats.claim(
            f"{ec} reaches top-2's final eval loss >= {SPEEDUP_CLAIMED:g}x faster "
            "(log speed-up - log 2 > 0)", pre["passed"],
            stats.paired(log_speed[ec], [math.log(SPEEDUP_CLAIMED)] * args.seeds),
            claimed_sign=+1,
            evidence=f"speed-up {stats.fmt_ci(stats.mean_ci(speed[ec]), 2, False)}x"))
        claims.append(stats.claim(f"{ec} reaches a lower final eval loss than top-2",
                                  pre["passed"], stats.paired(final[ec], final[BASELINE])))
        claims.append(stats.claim(f"{ec} reaches a lower final eval loss than top-1",
                                  pre["passed"], stats.paired(final[ec], final["top-1 (Switch)"])))

    rows = ["| arm | final eval loss (95% CI) | arm - top-2: paired diff (95% CI) | speed-up vs "
            "top-2 (95% CI) | encoder tokens with no expert (eval) | busiest expert x E (eval) |",
            "|---|---|---|---|---|---|"]
    summary = {}
    for arm, rs in runs.items():
        moe = arm != "dense"
        summary[arm] = {"final_eval_loss": final[arm], "speedup": speed[arm],
                        "dropped_fraction": [dropped(r) for r in rs] if moe else None,
                        "max_load": [max_load(r) for r in rs] if moe else None}
        s = summary[arm]
        diff = "-" if arm == BASELINE else stats.fmt_ci(stats.paired(final[arm], final[BASELINE]))
        rows.append(
            f"| {arm} | {stats.fmt_ci(stats.mean_ci(final[arm]), 3, False)} | {diff} | "
            f"{stats.fmt_ci(stats.mean_ci(speed[arm]), 2, False)} | "
            f"{stats.fmt_ci(stats.mean_ci(s['dropped_fraction']), 3, False) if moe else '-'} | "
            f"{stats.fmt_ci(stats.mean_ci(s['max_load']), 2, False) if moe else '-'} |")
    hists = {arm: histogram(runs[arm]) for arm in ROUTERS}
    hist_table = numeric_table("arm", [f"{n} experts" for n in range(5)] + ["5+"],
                               {a: [*h[:5], h[5:].sum()] for a, h in hists.items()}, 3)
    setup = (f"{steps} steps of the routing testbed; E={E} experts of d_ff 64 in every MoE arm, "
             f"encoder groups of {GROUP} tokens. Speed-up: top-2's steps / steps to reach "
             "top-2's final loss, per seed (never reached = 1.0).")
    return Report(pre, claims, setup, [*rows, "", stats.precondition_line(pre, BASELINE), ""], {
        "steps": steps, "summary": summary,
        "experts_per_token_hist": {a: h.tolist() for a, h in hists.items()},
        "curves": {a: [r["eval"] for r in rs] for a, rs in runs.items()}},
        notes=["Experts per encoder token at the last evaluation (mean over layers and seeds):",
               "", hist_table, ""])


def plots(results: dict, out: str) -> None:
    plot_curves(os.path.join(out, "eval_loss.png"),
                "Routing testbed: encoder router at equal experts", results["curves"], "eval loss")
    plot_histograms(os.path.join(out, "experts_per_token.png"),
                    {a: np.array(h) for a, h in results["experts_per_token_hist"].items()})


EXPERIMENT = Experiment("expert_choice", __doc__, arms, analyse, plots)

if __name__ == "__main__":
    main(EXPERIMENT)
