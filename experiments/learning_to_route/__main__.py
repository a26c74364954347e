"""Learning to route (Dikkala et al. 2023): does a learned router find the
clusters, and does that beat routing that cannot learn?

Claim: on data made of clusters, each with its own target function, an MoE
whose router is learned sends each cluster to its own experts and reaches a
lower loss than the same MoE with a frozen random router or a hash router.
The mechanism predicts that the learned-vs-frozen gap shrinks when the
clusters are so far apart that a random hyperplane already separates them.

Synthetic part (`experiments.harness.synthetic.ClusterTask`): K=4 clusters in 16
dimensions, each seed drawing its own teacher (centres and target
networks); one top-1 MoE layer of E=8 experts of 16 hidden units routing
the raw inputs (no norm or learnable scale in front of the router), no
capacity limit; separation swept over SEPARATIONS. Arms: dense (one FFN of
16 hidden units: equal active FLOPs), learned (switch), frozen random
(the router kept at its init), hash (token ids hashed to experts).

Language part (the routing testbed, `experiments.harness.testbed.testbed_config`):
dense vs MoE (E=16, top-2 of d_ff 64) with a learned router vs the same
router frozen at init (freeze_router) vs a hash router (top-1 of d_ff 128,
equal active FLOPs) vs a learned top-1 router over the hash arm's experts
(only the routing differs from hash); NMI between each held-out
document's domain and the expert its tokens choose, per encoder layer.

Precondition, per part: the learned MoE beats dense by >= 3 paired SE.

    python -m experiments.learning_to_route --quick   # 3 seeds, 800 T5 steps: ~14 min, 2 cores
    python -m experiments.learning_to_route --full    # 5 seeds, 5000 T5 steps, ~3 hours
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import figure, plot_curves
from experiments.harness.report import slug
from experiments.harness.runs import run_t5
from experiments.harness.synthetic import ClusterTask, train_synthetic
from experiments.harness.testbed import TESTBED_EXPERTS, testbed_config, testbed_moe, testbed_router
from moejax.routing import RouterConfig

SEPARATIONS = (0.5, 1.0, 4.0)
MAIN_SEPARATION = 1.0
SYNTH_ARMS = ("dense", "learned", "frozen random", "hash")
# "learned top-1" routes over the hash arm's experts (top-1 of d_ff 128),
# so only the routing differs between those two.
LANG_ARMS = ("dense", "learned", "frozen random", "hash", "learned top-1")


def synth_router(arm: str) -> RouterConfig:
    free = dict(capacity_factor=None, eval_capacity_factor=None)
    if arm == "dense":  # one expert that every token uses: a dense FFN
        return RouterConfig("top_k", num_experts=1, k=1, **free)
    name = {"learned": "switch", "frozen random": "frozen", "hash": "hash"}[arm]
    return RouterConfig(name, num_experts=8, **free)


def lang_config(size: str, seed: int, arm: str):
    cfg = testbed_config(size, seed)
    if arm == "dense":
        return cfg
    if arm == "hash":  # hash layers route each token to one expert: twice as wide
        return testbed_moe(cfg, testbed_router("hash", k=1), d_ff=cfg.model.d_ff)
    if arm == "learned top-1":  # Switch's gate, the probability: top-1 renormalised is
        # a constant 1, which gives the router no gradient
        return testbed_moe(cfg, testbed_router("top_k", k=1, normalize_weights=False),
                           d_ff=cfg.model.d_ff)
    return dataclasses.replace(testbed_moe(cfg), freeze_router=arm == "frozen random")


def steps(size: str) -> int:
    return {"quick": 800, "full": 4000, "smoke": 30}[size]


def arms(args):
    calls = {}
    for sep in SEPARATIONS:
        for arm in SYNTH_ARMS:
            calls[(sep, arm)] = lambda seed, sep=sep, arm=arm: functools.partial(
                train_synthetic, ClusterTask(widths=(16,) * 4, separation=sep, seed=seed),
                synth_router(arm), steps=steps(args.size), seed=seed, d_ff=16)
    for arm in LANG_ARMS:
        calls[("T5", arm)] = lambda seed, arm=arm: functools.partial(
            run_t5, lang_config(args.size, seed, arm),
            os.path.join(args.out, "runs", f"t5_{slug(arm)}_{seed}"), routing_nmi=arm != "dense")
    return calls


def learned_gaps(mse: dict) -> dict[float, dict]:
    """{separation: {other arm: paired(learned, other)}} of the test MSEs
    mse[(separation, arm)]."""
    return {sep: {o: stats.paired(mse[(sep, "learned")], mse[(sep, o)])
                  for o in ("frozen random", "hash", "dense")} for sep in SEPARATIONS}


def analyse(args, runs) -> Report:
    mse = {key: [r.test_loss for r in rs] for key, rs in runs.items() if key[0] != "T5"}
    gaps = learned_gaps(mse)
    main_sep, wide = MAIN_SEPARATION, max(SEPARATIONS)
    pre_synth = stats.precondition("test_mse", mse[(main_sep, "learned")],
                                   mse[(main_sep, "dense")])
    t5 = {arm: runs[("T5", arm)] for arm in LANG_ARMS}
    loss = {arm: [r["eval"][-1][1] for r in rs] for arm, rs in t5.items()}
    nmi = {arm: [float(np.mean(r["nmi"])) for r in rs] for arm, rs in t5.items() if arm != "dense"}
    pre_lang = stats.precondition("eval_loss", loss["learned"], loss["dense"])
    # The mechanism: the gap (learned - frozen, negative = learned better) is
    # more negative at the main separation than where clusters are far apart.
    gap_main = np.subtract(mse[(main_sep, "learned")], mse[(main_sep, "frozen random")])
    gap_wide = np.subtract(mse[(wide, "learned")], mse[(wide, "frozen random")])
    cfg = testbed_config(args.size, 0)
    claims = [
        stats.claim(f"synthetic (separation {main_sep:g}): learned beats frozen random (test MSE)",
                    pre_synth["passed"], gaps[main_sep]["frozen random"], part="synthetic"),
        stats.claim(f"synthetic (separation {main_sep:g}): learned beats hash (test MSE)",
                    pre_synth["passed"], gaps[main_sep]["hash"], part="synthetic"),
        stats.claim(f"synthetic: the learned-vs-frozen gap shrinks from separation {main_sep:g} "
                    f"to {wide:g} (gap difference < 0)", pre_synth["passed"],
                    stats.paired(gap_main, gap_wide), part="synthetic"),
        stats.claim("language: learned beats frozen random (eval loss)", pre_lang["passed"],
                    stats.paired(loss["learned"], loss["frozen random"]), part="language"),
        stats.claim("language: learned beats hash over the same experts (top-1 of d_ff "
                    f"{cfg.model.d_ff}; eval loss)", pre_lang["passed"],
                    stats.paired(loss["learned top-1"], loss["hash"]), part="language"),
        stats.claim("language: a learned router routes by domain more than a frozen one "
                    "(NMI(domain, expert), mean over encoder layers)", pre_lang["passed"],
                    stats.paired(nmi["learned"], nmi["frozen random"]), claimed_sign=+1,
                    part="language"),
    ]

    rows = ["| separation | arm | test MSE (95% CI) | learned - arm: paired diff (95% CI) | "
            "NMI(cluster, expert) |", "|---|---|---|---|---|"]
    for sep in SEPARATIONS:
        for arm in SYNTH_ARMS:
            diff = "-" if arm == "learned" else stats.fmt_ci(gaps[sep][arm], 4)
            nmis = [r.nmi[-1][1][0] for r in runs[(sep, arm)]]
            own = stats.fmt_ci(stats.mean_ci(mse[(sep, arm)]), 4, False)
            rows.append(f"| {sep:g} | {arm} | {own} | {diff} | "
                        f"{stats.fmt_ci(stats.mean_ci(nmis), 2, False)} |")
    lang_rows = ["| arm | eval loss (95% CI) | learned - arm: paired diff (95% CI) | "
                 "NMI(domain, expert) per encoder layer |", "|---|---|---|---|"]
    for arm in LANG_ARMS:
        diff = "-" if arm == "learned" else stats.fmt_ci(stats.paired(loss["learned"], loss[arm]))
        per_layer = ("-" if arm == "dense" else ", ".join(
            f"{v:.2f}" for v in np.mean([r["nmi"] for r in t5[arm]], axis=0)))
        lang_rows.append(f"| {arm} | {stats.fmt_ci(stats.mean_ci(loss[arm]), 3, False)} | {diff} "
                         f"| {per_layer} |")
    sections = [
        f"**Synthetic**: K=4 clusters, E=8 top-1 experts of 16 units, {steps(args.size)} steps; "
        "each seed its own teacher.", "", *rows, "",
        stats.precondition_line(pre_synth, "synthetic, separation 1"), "",
        f"**Language** (routing testbed): {cfg.steps} steps; MoE E={TESTBED_EXPERTS} top-2 of "
        f"d_ff {cfg.model.d_ff // 2}; hash and learned top-1: top-1 of d_ff {cfg.model.d_ff}.",
        "", *lang_rows, "", stats.precondition_line(pre_lang, "language"), ""]
    return Report(
        {"synthetic": pre_synth, "language": pre_lang}, claims,
        "Intervals are 95% t intervals over seeds.", sections,
        {"synthetic": {f"{sep:g}/{arm}": [dataclasses.asdict(r) for r in runs[(sep, arm)]]
                       for sep in SEPARATIONS for arm in SYNTH_ARMS},
         "language": {arm: [{"eval": r["eval"], "nmi": r.get("nmi", [])} for r in rs]
                      for arm, rs in t5.items()}})


def heatmaps(path: str, runs: dict[str, list[dict]]) -> None:
    arms = [a for a in SYNTH_ARMS if a != "dense"]
    snaps = runs["learned"][0]["confusion"]
    with figure(path, len(arms), len(snaps), figsize=(2.2 * len(snaps), 2.2 * len(arms)),
                dpi=110) as (fig, axes):
        for r, arm in enumerate(arms):
            for c, (step, table) in enumerate(runs[arm][0]["confusion"]):
                ax = axes[r, c]
                ax.imshow(np.array(table), vmin=0, vmax=1, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"step {step}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{arm}\ncluster", fontsize=9)
                if r == len(arms) - 1:
                    ax.set_xlabel("expert", fontsize=9)
        # The scale in words: a colour bar does not fit the grid's tight layout.
        fig.suptitle(f"P(expert | cluster), separation {MAIN_SEPARATION:g}, seed 0\n"
                     "colour: dark purple 0 ... yellow 1 (viridis)")


def gap_plot(path: str, gaps: dict[float, dict]) -> None:
    with figure(path) as (_, ax):
        seps = sorted(gaps)
        for other, marker in (("frozen random", "o"), ("hash", "s")):
            mean = [gaps[s][other]["mean"] for s in seps]
            lo = [gaps[s][other]["ci95"][0] for s in seps]
            hi = [gaps[s][other]["ci95"][1] for s in seps]
            ax.errorbar(seps, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)],
                        marker=marker, capsize=3, label=f"learned - {other}")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(seps, [f"{v:g}" for v in seps])  # the separations run, not decades
        ax.minorticks_off()
        ax.set_xlabel("cluster separation")
        ax.set_ylabel("paired test-MSE difference (95% CI)")
        ax.set_title("Learned router's advantage vs cluster separation")
        ax.legend()


def plots(results: dict, out: str) -> None:
    synth, main_sep = results["synthetic"], MAIN_SEPARATION
    at = lambda sep: {a: synth[f"{sep:g}/{a}"] for a in SYNTH_ARMS}
    mse = {(sep, a): [r["test_loss"] for r in rs] for sep in SEPARATIONS
           for a, rs in at(sep).items()}
    plot_curves(os.path.join(out, "synthetic_test_loss.png"),
                f"Clustered regression (separation {main_sep:g}): test loss",
                {a: [r["loss_curve"] for r in rs] for a, rs in at(main_sep).items()}, "test MSE",
                log_y=True, band="ci")
    plot_curves(os.path.join(out, "synthetic_nmi.png"),
                f"Routing purity (NMI cluster/expert), separation {main_sep:g}",
                {a: [[(s, v[0]) for s, v in r["nmi"]] for r in rs]
                 for a, rs in at(main_sep).items() if a != "dense"}, "NMI", band="ci")
    heatmaps(os.path.join(out, "synthetic_confusion.png"), at(main_sep))
    gap_plot(os.path.join(out, "synthetic_gap_vs_separation.png"), learned_gaps(mse))
    plot_curves(os.path.join(out, "t5_eval_loss.png"), "Routing testbed: eval loss",
                {a: [r["eval"] for r in rs] for a, rs in results["language"].items()},
                "eval loss (span corruption)", band="ci")


EXPERIMENT = Experiment("learning_to_route", __doc__, arms, analyse, plots)

if __name__ == "__main__":
    main(EXPERIMENT)
