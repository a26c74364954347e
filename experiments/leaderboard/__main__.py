"""Router leaderboard: every registered router on the routing testbed.

"I wrote a router: where does it stand?" Register it in your own module
(`moejax.routing.register_router("my_router", my_kernel)`) and run

    python -m experiments.leaderboard --router my_module:my_router

Every registered router (and the ones named by --router, imported from
their modules) is trained on the routing testbed
(`experiments.harness.testbed.testbed_config`) with paired seeds, and ranked by
final eval loss. Each arm is compared, paired by seed, with the reference
MoE 'testbed_top2': the testbed's own top-2 in both stacks (renormalised
weights, no capacity limit, no aux loss), the arm whose margin over dense
is the precondition (it is the testbed's MoE run, so after
`python -m experiments.testbed` it is copied, not trained). Fair by
construction:
- equal active FLOPs: E=16 experts of d_ff = 128 / k in every FFN, k the
  router's default (expert choice: capacity factor 2, i.e. 2 experts per
  token on average, d_ff 64; top-p: d_ff 64, its experts per token shown;
  relu: its target of k = 2 experts per token, d_ff 64, no capacity limit,
  as ReMoE trains);
- only the encoder's router changes: the decoder routes with the testbed's
  top-2 in every arm (non-causal routers cannot route a decoder), encoder
  tokens in groups of 512;
- each router with its registered defaults otherwise (capacity factors,
  aux-loss weights), so the table ranks routers as shipped; 'frozen' is
  top-k with the encoder router kept at its init (the decoder's trains).
Columns: eval loss (95% CI), the paired differences to the reference and
to dense (95% CI), the standing they give (ahead of / level with / behind
each), the busiest expert's load x E, the fraction of encoder tokens with no expert
and experts per token (eval, encoder layers). results.json keeps each
arm's config fingerprint and per-seed numbers: a rerun trains only arms
whose config changed or that are new (`--rerun` trains everything), so
adding a router costs its own runs only.

    python -m experiments.leaderboard --quick   # 3 seeds x 800 steps, 36 runs: 26 minutes on
                                                # 2 CPU cores after the testbed's --quick,
                                                # whose dense and reference runs it copies
    python -m experiments.leaderboard --only my_router --router my_module:my_router
                                                # just yours against dense and the reference
                                                # (--router or --only: written to
                                                # results/leaderboard/user unless --out)
    python -m experiments.leaderboard --full    # 5 seeds x 5000 steps
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import time

import numpy as np

from experiments.harness import args as shared_args
from experiments.harness import stats
from experiments.harness.args import ROOT
from experiments.harness.plots import figure
from experiments.harness.probes import encoder_layers
from experiments.harness.report import slug, write_results
from experiments.harness.runs import fingerprint, run_arms, run_t5
from experiments.harness.testbed import TESTBED_EXPERTS, testbed_config, testbed_moe, with_moe
from moejax import cli
from moejax.routing import ROUTERS, RouterConfig

NAME = "leaderboard"
GROUP = 512
# The reference every arm is paired with: the testbed's MoE (top-2 over
# experts of d_ff 64 in both stacks, its router at the testbed's settings).
# Routers at their registered defaults (top_k: capacity 1.25, balance loss
# 0.01, weights not renormalised) tie dense at this scale, which would make
# every verdict inconclusive for a reason that is not the router under test.
BASELINE = "testbed_top2"
# The arms every leaderboard has besides the routers: no router may take their names.
BUILT_IN = ("dense", BASELINE)


def router_config(name: str) -> RouterConfig:
    """The router an arm trains in the encoder, at the router's defaults."""
    if name == "expert_choice":
        return RouterConfig(name, num_experts=TESTBED_EXPERTS, capacity_factor=2.0,
                            eval_capacity_factor=2.0)
    if name == "relu":  # ReMoE trains dropless: early on about half the experts are on
        return RouterConfig(name, num_experts=TESTBED_EXPERTS, capacity_factor=None,
                            eval_capacity_factor=None)
    return RouterConfig(name, num_experts=TESTBED_EXPERTS)


def arm_config(size: str, seed: int, name: str):
    cfg = testbed_config(size, seed, evals=5)
    if name == "dense":
        return cfg
    cfg = testbed_moe(cfg)  # the reference, and every other arm's decoder
    if name == BASELINE:
        return cfg
    router = router_config(name)
    active = 2 if name in ("expert_choice", "top_p") else router.k
    return with_moe(cfg, encoder=dict(router=router, d_ff=cfg.model.d_ff // active,
                                      group_size=GROUP))


def summary(run: dict) -> dict:
    """What the table and results.json keep of one run."""
    enc = functools.partial(encoder_layers, run["last_eval"])
    loads = enc("expert_load")
    return {"eval_loss": run["eval"][-1][1], "curve": run["eval"],
            "max_load": float(np.mean([len(v) * max(v) for v in loads])) if loads else None,
            "dropped_fraction": float(np.mean(enc("dropped_fraction"))) if loads else None,
            "experts_per_token": float(np.mean(enc("experts_per_token"))) if loads else None}


def user_routers(specs: list[str]) -> tuple[tuple[str, ...], list[str]]:
    modules, names = [], []
    ours = set(ROUTERS)  # moejax's own routers, before any user module registers one
    for spec in specs:
        module, sep, name = spec.partition(":")
        if not sep or not module or not name:
            cli.fail(f"--router {spec!r} must be module:router_name, e.g. "
                     "my_routers:sticky_top2")
        try:
            importlib.import_module(module)
        except ImportError as e:
            cli.fail(f"--router {spec!r}: cannot import {module!r} ({e})")
        except Exception as e:  # the user's module failed while importing: say how, in one line
            cli.fail(f"--router {spec!r}: importing {module!r} failed "
                     f"({type(e).__name__}: {' '.join(str(e).split())})")
        if name in BUILT_IN:
            cli.fail(f"--router {spec!r}: {name!r} is the name of a built-in arm; "
                     "register the router under another name")
        if name in ours:
            cli.fail(f"--router {spec!r}: {name!r} is one of moejax's own routers, not one "
                     f"{module!r} registered; register yours under a new name")
        if name not in ROUTERS:
            cli.fail(f"--router {spec!r}: importing {module!r} registered no "
                     f"router {name!r}; registered: {', '.join(sorted(ROUTERS))}")
        modules.append(module)
        names.append(name)
    return tuple(modules), names


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plot(path: str, ranked: list[str], diffs: dict[str, dict]) -> None:
    with figure(path, figsize=(6.5, 0.45 * len(ranked) + 1.5)) as (_, ax):
        y = np.arange(len(ranked))[::-1]
        mean = [diffs[a]["mean"] for a in ranked]
        lo = [diffs[a]["mean"] - diffs[a]["ci95"][0] for a in ranked]
        hi = [diffs[a]["ci95"][1] - diffs[a]["mean"] for a in ranked]
        ax.errorbar(mean, y, xerr=[lo, hi], fmt="o", capsize=3)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(y, ranked)
        ax.set_xlabel(f"eval loss - {BASELINE}'s (paired, 95% CI; left = better)")
        ax.set_title("Router leaderboard: routing testbed, encoder router")


COMMITTED = os.path.join(ROOT, "results", NAME)


def default_out(routers: list[str], only: str = "") -> str | None:
    """Where a run writes when --out is not given: with user routers
    (--router) or a selection (--only), results/leaderboard/user
    (git-ignored), so the committed table and results.json are never
    rewritten in a user's clone; else the shared default (None)."""
    return os.path.join(COMMITTED, "user") if routers or only else None


def standing(diff: dict) -> str:
    """A leaderboard's word for a paired eval-loss difference (arm - other):
    'ahead of' / 'behind' when its 95% interval excludes 0, else 'level with'."""
    lo, hi = diff["ci95"]
    return "ahead of" if hi < 0 else "behind" if lo > 0 else "level with"


def main(argv: list[str] | None = None):
    parser = shared_args.parser(NAME, __doc__)
    parser.add_argument("--router", action="append", default=[], metavar="MODULE:NAME",
                        help="a router your module registers (repeatable)")
    parser.add_argument("--only", default="", metavar="ROUTER,ROUTER",
                        help="just these routers, with dense and the reference")
    parser.add_argument("--rerun", action="store_true", help="ignore stored results")
    args = parser.parse_args(argv)
    # Checked before prepare creates --out: a bad flag leaves nothing behind.
    modules, names = user_routers(args.router)
    args.out = args.out or default_out(args.router, args.only)
    arms = [*BUILT_IN, *sorted(set(ROUTERS) | set(names))]
    selected = arms
    if args.only:
        only = set(args.only.split(",")) | set(names)
        unknown = only - set(arms)
        if unknown:
            cli.fail(f"--only names unknown routers {sorted(unknown)}; "
                     f"registered: {', '.join(arms[len(BUILT_IN):])}")
        selected = [a for a in arms if a in only | set(BUILT_IN)]
    args = shared_args.prepare(args)
    if args.replot:
        with open(os.path.join(args.out, "results.json")) as f:
            stored = json.load(f)
        loss = {a: [r["eval_loss"] for r in stored["arms"][a]["seeds"]] for a in stored["ranking"]}
        plot(os.path.join(args.out, "leaderboard.png"), stored["ranking"],
             {a: stats.paired(loss[a], loss[BASELINE]) for a in stored["ranking"]})
        return
    start = time.time()
    configs = {a: [arm_config(args.size, s, a) for s in range(args.seeds)] for a in arms}
    prints = {a: [fingerprint(c) for c in cs] for a, cs in configs.items()}
    # A user's run reads the committed arms too, and writes only to its own folder.
    stored = {}
    for stored_path in dict.fromkeys([os.path.join(COMMITTED, "results.json"),
                                      os.path.join(args.out, "results.json")]):
        if os.path.exists(stored_path) and not args.rerun:
            with open(stored_path) as f:
                stored.update(json.load(f).get("arms", {}))
    reuse = {a for a in arms if a in stored and stored[a]["fingerprints"] == prints[a]}
    # Shown: the selected arms (all, without --only) and, without --only,
    # every stored arm still valid for this config.
    # (results.json keeps every valid stored arm either way.)
    kept_elsewhere = sorted(reuse - set(selected)) if args.only else []
    arms = selected if args.only else [a for a in arms if a in selected or a in reuse]
    reuse &= set(arms)
    todo = {a: (lambda seed, a=a: functools.partial(
        run_t5, configs[a][seed], os.path.join(args.out, "runs", f"{slug(a)}_{seed}"),
        imports=modules)) for a in selected if a not in reuse}
    if reuse:
        print(f"reusing stored results of {plural(len(reuse), 'arm')} (--rerun to train them "
              f"again): {', '.join(sorted(reuse))}")
    fresh = run_arms(todo, args.seeds, NAME, args.jobs, os.path.join(args.out, "runs")) \
        if todo else {}
    results = {a: stored[a]["seeds"] if a in reuse else [summary(r) for r in fresh[a]]
               for a in arms}
    loss = {a: [r["eval_loss"] for r in rs] for a, rs in results.items()}
    pre = stats.precondition("eval_loss", loss[BASELINE], loss["dense"])
    diffs = {a: stats.paired(loss[a], loss[BASELINE]) for a in arms}
    vs_dense = {a: stats.paired(loss[a], loss["dense"]) for a in arms}
    ranked = sorted(arms, key=lambda a: np.mean(loss[a]))
    # results.json keeps the experiments' shared verdicts; the table speaks
    # as a leaderboard (standing against the reference and against dense).
    claims = [stats.claim(f"{a} beats {BASELINE} (eval loss)", pre["passed"], diffs[a])
              for a in ranked if a not in BUILT_IN]

    def stands(a):
        if a in BUILT_IN:
            return "-"
        words = f"{standing(diffs[a])} {BASELINE}, {standing(vs_dense[a])} dense"
        return words if pre["passed"] else f"{words} (inconclusive: MoE does not beat dense here)"

    def col(a, key, digits):
        values = [r[key] for r in results[a]]
        return "-" if values[0] is None else f"{np.mean(values):.{digits}f}"

    rows = [f"| rank | router | eval loss (95% CI) | - {BASELINE} (paired, 95% CI) | - dense "
            "(paired, 95% CI) | standing | busiest expert x E | tokens with no expert | "
            "experts per token |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, a in enumerate(ranked, 1):
        d = "-" if a == BASELINE else stats.fmt_ci(diffs[a])
        dd = "-" if a == "dense" else stats.fmt_ci(vs_dense[a])
        rows.append(f"| {i} | {a} | {stats.fmt_ci(stats.mean_ci(loss[a]), 3, False)} | {d} | {dd} "
                    f"| {stands(a)} | {col(a, 'max_load', 2)} | {col(a, 'dropped_fraction', 3)} "
                    f"| {col(a, 'experts_per_token', 2)} |")
    minutes = (time.time() - start) / 60
    cfg = configs["dense"][0]
    table = "\n".join([
        f"`--{args.size}`: {args.seeds} paired seeds, {cfg.steps} steps of the routing testbed; "
        f"encoder router under test (E={TESTBED_EXPERTS}, d_ff = 128 / k, groups of {GROUP}), "
        f"decoder top-2 in every MoE arm; each router at its registered defaults. "
        f"{BASELINE}: the testbed's MoE (top-2 in both stacks, renormalised, no capacity "
        f"limit, no aux loss). "
        f"{minutes:.1f} minutes this run ({plural(len(todo), 'arm')} trained, "
        f"{len(reuse)} reused; {plural(args.jobs, 'job')}). Standing: ahead of / behind where "
        f"the paired 95% interval of the eval-loss difference excludes 0, else level with.",
        "", *rows, "", stats.precondition_line(pre, f"{BASELINE} vs dense")])
    plot(os.path.join(args.out, "leaderboard.png"), ranked, diffs)
    write_results(args.out, table, {
        "size": args.size, "seeds": args.seeds, "minutes": minutes, "precondition": pre,
        "claims": claims, "ranking": ranked,
        "arms": {**{a: {"fingerprints": prints[a], "seeds": results[a]} for a in arms},
                 **{a: stored[a] for a in kept_elsewhere}}})
    print(table)


if __name__ == "__main__":
    main()
