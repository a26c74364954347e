"""Dynamic top-p routing vs top-k (Huang et al. 2024): quality against compute.

Claim: a router that gives each token the smallest set of experts whose
probabilities sum to a threshold p reaches top-2's loss with fewer experts
per token (a point below the top-k quality/compute curve), and gives harder
inputs more experts.

Every arm routes with no capacity limit (the number of experts a token gets
is the router's choice alone); top-p arms add the entropy loss that keeps
the router from spreading out (weights in ENTROPY_WEIGHTS).
- Synthetic: K=4 clusters whose targets are random tanh networks of 2, 8,
  32 and 128 units (difficulty = the target's complexity; the per-cluster
  test loss confirms the order), each seed its own teacher; two residual
  MoE layers of E=8 experts of 16 hidden units. Arms: top-k for k = 1, 2, 3,
  top-p for every threshold in THRESHOLDS x entropy weight, and dense (one
  FFN of 32 units: top-2's active FLOPs). Curve: test MSE against mean
  experts per token.
- Language (the routing testbed): dense, top-2 and top-p (p = 0.4, entropy
  weight 1e-4, the paper's setting) with E=16 experts of d_ff 64 in every
  FFN; eval loss and experts per token per layer.

Claims (paired over seeds): (1) the best top-p arm with <= 90% of top-2's
experts per token is below the top-k curve (its MSE minus the top-k MSE
interpolated linearly at its experts per token < 0); (2) that arm's MSE is
<= top-2's; (3) the Spearman correlation between a cluster's difficulty and
its experts per token is > 0 (per seed, for top-p at p=0.4). Choosing the
best of several top-p arms favours top-p; the table shows every arm.
Preconditions: top-2 beats dense by >= 3 paired SE, per part.

    python -m experiments.dynamic_top_p --quick   # 3 seeds, 800 T5 steps: ~10 min on 2 cores
                                                  # after the testbed's --quick (shared runs)
    python -m experiments.dynamic_top_p --full    # 5 seeds, 5000 T5 steps: 63 min on 2 cores
                                                  # after learning_to_route's --full (shared
                                                  # runs); about 2 hours run first
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from scipy import stats as sps

from experiments.harness import stats
from experiments.harness.experiment import Experiment, Report, main
from experiments.harness.plots import figure, plot_curves
from experiments.harness.report import numeric_table, slug
from experiments.harness.runs import run_t5
from experiments.harness.synthetic import ClusterTask, train_synthetic
from experiments.harness.testbed import testbed_config, testbed_moe, testbed_router
from moejax.routing import RouterConfig

E = 8
WIDTHS = (2, 8, 32, 128)
THRESHOLDS = (0.25, 0.4, 0.6)
ENTROPY_WEIGHTS = (0.0, 1e-4, 1e-2)
FREE = dict(capacity_factor=None, eval_capacity_factor=None)
TOP_K = {f"top-{k}": RouterConfig("top_k", num_experts=E, k=k, **FREE) for k in (1, 2, 3)}
TOP_P = {f"top-p {p} (entropy {w:g})": RouterConfig("top_p", num_experts=E, threshold=p,
                                                    entropy_weight=w, **FREE)
         for p in THRESHOLDS for w in ENTROPY_WEIGHTS}
SYNTH = {"dense": RouterConfig("top_k", num_experts=1, k=1, **FREE), **TOP_K, **TOP_P}
DIFFICULTY_ARM = "top-p 0.4 (entropy 0.0001)"
LANG = {"dense": None, "top-2": testbed_router("top_k", k=2),
        "top-p 0.4": testbed_router("top_p", threshold=0.4, entropy_weight=1e-4)}


def synth_call(seed: int, arm: str, steps: int):
    d_ff = 32 if arm == "dense" else 16  # dense = top-2's active FLOPs
    return functools.partial(train_synthetic, ClusterTask(widths=WIDTHS, separation=1.0, seed=seed),
                             SYNTH[arm], steps=steps, seed=seed, layers=2, d_ff=d_ff)


def lang_config(size: str, seed: int, arm: str):
    cfg = testbed_config(size, seed)
    return cfg if LANG[arm] is None else testbed_moe(cfg, LANG[arm], d_ff=cfg.model.d_ff // 2)


def t5_layers(run: dict) -> dict[str, float]:
    row = run["last_eval"]
    return {k[len("eval_"):-len("/experts_per_token")]: v for k, v in sorted(row.items())
            if k.endswith("/experts_per_token") and "/layers_" in k and k.startswith("eval_")}


def below_curve(experts: np.ndarray, mse: np.ndarray, k_experts: np.ndarray,
                k_mse: np.ndarray) -> np.ndarray:
    """Per seed: an arm's MSE minus the top-k curve's MSE interpolated at the
    arm's experts per token (experts/mse: [S]; k_*: [S, 3] for k = 1, 2, 3)."""
    return np.array([m - np.interp(x, kx, km) for x, m, kx, km in zip(experts, mse, k_experts,
                                                                      k_mse)])


def plot_tradeoff(path: str, experts: dict[str, np.ndarray], mse: dict[str, np.ndarray]) -> None:
    with figure(path, figsize=(6.5, 4.5)) as (_, ax):
        kx = [experts[a].mean() for a in TOP_K]
        ax.plot(kx, [mse[a].mean() for a in TOP_K], "k-o", label="top-k (k = 1, 2, 3)")
        for w, marker in zip(ENTROPY_WEIGHTS, "s^D"):
            arms = [f"top-p {p} (entropy {w:g})" for p in THRESHOLDS]
            ax.errorbar([experts[a].mean() for a in arms], [mse[a].mean() for a in arms],
                        yerr=[np.diff(stats.mean_ci(mse[a])["ci95"])[0] / 2 for a in arms],
                        marker=marker, ls="--", capsize=3, label=f"top-p, entropy {w:g}")
        ax.axhline(mse["dense"].mean(), color="gray", ls=":", label="dense (top-2 FLOPs)")
        ax.set_xlabel("experts per token (mean over layers)")
        ax.set_ylabel("test MSE (mean over seeds, 95% CI)")
        ax.set_yscale("log")
        ax.set_title("Synthetic: quality against compute")
        ax.legend(fontsize=8)


def steps(size: str) -> int:
    return {"quick": 800, "full": 4000, "smoke": 30}[size]


def arms(args):
    calls = {("synthetic", a): (lambda seed, a=a: synth_call(seed, a, steps(args.size)))
             for a in SYNTH}
    calls.update({("language", a): (lambda seed, a=a: functools.partial(
        run_t5, lang_config(args.size, seed, a),
        os.path.join(args.out, "runs", f"{slug(a)}_{seed}")))
        for a in LANG})
    return calls


def synthetic_numbers(synth: dict[str, list[dict]]):
    """(test MSE [S], experts per token [S] (mean over layers), experts per
    token by cluster [S, clusters] (mean of both layers)) per arm."""
    mse = {a: np.array([r["test_loss"] for r in rs]) for a, rs in synth.items()}
    experts = {a: np.array([np.mean(r["experts_per_token"]) for r in rs])
               for a, rs in synth.items()}
    per_cluster = {a: np.array([np.mean(r["experts_per_token_per_cluster"], axis=0) for r in rs])
                   for a, rs in synth.items()}
    return mse, experts, per_cluster


def analyse(args, runs) -> Report:
    synth = {a: [dataclasses.asdict(r) for r in runs[("synthetic", a)]] for a in SYNTH}
    t5 = {a: runs[("language", a)] for a in LANG}

    mse, experts, per_cluster = synthetic_numbers(synth)
    k_experts = np.stack([experts[a] for a in TOP_K], 1)
    k_mse = np.stack([mse[a] for a in TOP_K], 1)
    pre_synth = stats.precondition("test_mse", mse["top-2"], mse["dense"])
    frugal = [a for a in TOP_P if experts[a].mean() <= 0.9 * experts["top-2"].mean()]
    claims = []
    if frugal:
        best = min(frugal, key=lambda a: mse[a].mean())
        claims.append(stats.claim(
            f"synthetic: {best} (the best top-p arm with <= 90% of top-2's experts) is below the "
            "top-k curve (MSE - interpolated top-k MSE < 0)", pre_synth["passed"],
            stats.paired(below_curve(experts[best], mse[best], k_experts, k_mse),
                         np.zeros(args.seeds)),
            evidence=f"{experts[best].mean():.2f} vs top-2's {experts['top-2'].mean():.2f} "
                     "experts per token", part="synthetic"))
        claims.append(stats.claim(f"synthetic: {best} reaches top-2's test MSE or lower",
                                  pre_synth["passed"], stats.paired(mse[best], mse["top-2"]),
                                  part="synthetic"))
    else:
        best = min(TOP_P, key=lambda a: experts[a].mean())
        claims.append(stats.claim(
            f"synthetic: a top-p arm uses <= 90% of top-2's experts per token ({best}, the "
            "fewest: experts - 0.9 x top-2's < 0)", pre_synth["passed"],
            stats.paired(experts[best], 0.9 * experts["top-2"]), part="synthetic"))
    rho = np.array([sps.spearmanr(WIDTHS, row)[0] if np.ptp(row) > 0 else 0.0
                    for row in per_cluster[DIFFICULTY_ARM]])
    claims.append(stats.claim(
        f"synthetic: harder clusters get more experts ({DIFFICULTY_ARM}: Spearman rho of target "
        "width and experts per token > 0)", pre_synth["passed"],
        stats.paired(rho, np.zeros(args.seeds)), claimed_sign=+1, part="synthetic"))

    loss = {a: np.array([r["eval"][-1][1] for r in rs]) for a, rs in t5.items()}
    lang_experts = {a: np.array([np.mean(list(t5_layers(r).values())) for r in rs])
                    for a, rs in t5.items() if a != "dense"}
    pre_lang = stats.precondition("eval_loss", loss["top-2"], loss["dense"])
    claims.append(stats.claim(
        "language: top-p 0.4 reaches top-2's eval loss or lower", pre_lang["passed"],
        stats.paired(loss["top-p 0.4"], loss["top-2"]),
        evidence=f"{lang_experts['top-p 0.4'].mean():.2f} vs 2.00 experts per token",
        part="language"))

    rows = ["| arm | test MSE (95% CI) | arm - top-2 (95% CI) | experts/token (layer 1, 2) | "
            "MSE - top-k curve (95% CI) |", "|---|---|---|---|---|"]
    for a, rs in synth.items():
        layers = np.mean([r["experts_per_token"] for r in rs], axis=0)
        diff = "-" if a == "top-2" else stats.fmt_ci(stats.paired(mse[a], mse["top-2"]), 4)
        curve = (stats.fmt_ci(stats.paired(below_curve(experts[a], mse[a], k_experts, k_mse),
                                           np.zeros(args.seeds)), 4) if a in TOP_P else "-")
        rows.append(f"| {a} | {stats.fmt_ci(stats.mean_ci(mse[a]), 4, False)} | {diff} | "
                    f"{layers[0]:.2f}, {layers[1]:.2f} | {curve} |")
    widths = [f"width {w}" for w in WIDTHS]
    cluster_table = numeric_table("arm", widths, {a: per_cluster[a].mean(0) for a in TOP_P}, 2)
    loss_table = numeric_table("arm", widths, {
        a: np.mean([r["test_loss_per_cluster"] for r in synth[a]], axis=0) for a in TOP_K}, 4)
    layer_names = list(t5_layers(t5["top-2"][0]))
    lang_rows = ["| arm | eval loss (95% CI) | arm - top-2 (95% CI) | experts/token "
                 f"({', '.join(layer_names)}) |", "|---|---|---|---|"]
    for a in LANG:
        diff = "-" if a == "top-2" else stats.fmt_ci(stats.paired(loss[a], loss["top-2"]))
        per_layer = "-" if a == "dense" else ", ".join(
            f"{np.mean([t5_layers(r)[n] for r in t5[a]]):.2f}" for n in layer_names)
        lang_rows.append(f"| {a} | {stats.fmt_ci(stats.mean_ci(loss[a]), 3, False)} | {diff} | "
                         f"{per_layer} |")
    cfg = testbed_config(args.size, 0)
    sections = [
        f"**Synthetic**: E={E}, 2 MoE layers, {steps(args.size)} steps.", "", *rows, "",
        stats.precondition_line(pre_synth, "synthetic: top-2 vs dense"), "",
        "Experts per token by cluster (mean of both layers and seeds):", "", cluster_table, "",
        "Test MSE by cluster (difficulty check):", "", loss_table, "",
        f"**Language** (routing testbed, {cfg.steps} steps, E=16 of d_ff 64):", "", *lang_rows, "",
        stats.precondition_line(pre_lang, "language: top-2 vs dense"), ""]
    return Report(
        {"synthetic": pre_synth, "language": pre_lang}, claims,
        "No capacity limit anywhere.", sections,
        {"steps": steps(args.size), "widths": WIDTHS, "best_top_p": best, "synthetic": synth,
         "language": {a: [{"eval": r["eval"], "experts_per_token_per_layer": t5_layers(r)}
                          for r in rs] for a, rs in t5.items()}})


def plots(results: dict, out: str) -> None:
    mse, experts, per_cluster = synthetic_numbers(results["synthetic"])
    plot_tradeoff(os.path.join(out, "synthetic_tradeoff.png"), experts, mse)
    with figure(os.path.join(out, "synthetic_experts_per_cluster.png"),
                figsize=(6, 3.8)) as (_, ax):
        for w, marker in zip(ENTROPY_WEIGHTS, "s^D"):
            for p in THRESHOLDS:
                a = f"top-p {p} (entropy {w:g})"
                ci = np.array([stats.mean_ci(per_cluster[a][:, c])["ci95"]
                               for c in range(len(WIDTHS))]).T
                ax.errorbar(range(len(WIDTHS)), per_cluster[a].mean(0),
                            yerr=np.abs(ci - per_cluster[a].mean(0)), marker=marker, capsize=2,
                            label=a)
        ax.set_xticks(range(len(WIDTHS)), [str(w) for w in WIDTHS])
        ax.set_xlabel("cluster target width (tanh units): difficulty")
        ax.set_ylabel("experts per token (95% CI)")
        ax.set_title("Synthetic: experts per token by difficulty")
        ax.legend(fontsize=6, ncol=2)
    plot_curves(os.path.join(out, "t5_eval_loss.png"), "Routing testbed: eval loss",
                {a: [r["eval"] for r in rs] for a, rs in results["language"].items()},
                "eval loss")


EXPERIMENT = Experiment("dynamic_top_p", __doc__, arms, analyse, plots)

if __name__ == "__main__":
    main(EXPERIMENT)
