"""The summary table of experiments/README.md, regenerated from results/*/results.json.

    python -m experiments.summary           # rewrite the table in experiments/README.md
    python -m experiments.summary --check   # exit 1 if the README's table is stale

The table sits between SUMMARY_START and SUMMARY_END; everything else in
the README is prose kept by hand.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from experiments.harness.stats import check_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "experiments", "README.md")
SUMMARY_START = "<!-- summary:start (python -m experiments.summary) -->"
SUMMARY_END = "<!-- summary:end -->"


def _preconditions(pre: dict) -> list[tuple[str | None, dict]]:
    if all(isinstance(v, dict) for v in pre.values()):
        return list(pre.items())
    return [(None, pre)]


def _pre_text(part: str | None, pre: dict) -> str:
    z = -pre["diff"] / pre["se"] if pre.get("se") else float("inf")
    lo, hi = pre["ci95"]
    label = f"{part}: " if part else ""
    return (f"{label}{'passed' if pre['passed'] else 'failed'} ({z:.1f} SE; MoE - dense "
            f"{pre['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}])")


def table(results_root: str = os.path.join(ROOT, "results")) -> str:
    rows = ["| experiment | size, seeds | precondition (MoE beats dense by >= 3 paired SE) | "
            "claim | verdict | evidence (95% CI) |", "|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(results_root, "*", "results.json"))):
        name = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            results = json.load(f)
        check_schema(results)
        pres = dict(_preconditions(results["precondition"]))
        link = f"[{name}]({name}/README.md)"
        for claim in results["claims"]:
            part = claim.get("part")
            rows.append(f"| {link} | `--{results['size']}`, {results['seeds']} | "
                        f"{_pre_text(part, pres[part])} | {claim['claim']} | "
                        f"**{claim['verdict']}** | {claim['evidence']} |")
    return "\n".join(rows)


def render(readme: str, body: str) -> str:
    if SUMMARY_START not in readme or SUMMARY_END not in readme:
        raise SystemExit(f"error: {README} has no {SUMMARY_START} ... {SUMMARY_END} markers")
    head, rest = readme.split(SUMMARY_START, 1)
    _, tail = rest.split(SUMMARY_END, 1)
    return f"{head}{SUMMARY_START}\n{body}\n{SUMMARY_END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the README's table differs")
    args = parser.parse_args(argv)
    with open(README) as f:
        readme = f.read()
    new = render(readme, table())
    if args.check:
        if new != readme:
            print(f"error: {README}'s summary table is stale; run python -m experiments.summary",
                  file=sys.stderr)
            return 1
        return 0
    with open(README, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
