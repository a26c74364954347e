"""Formatting and writing an experiment's results: table.md and results.json,
stamped with the code version that made them."""
from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step at which the piecewise-linear `curve` [(step, loss)] is <=
    target; None if it never is."""
    if curve and curve[0][1] <= target:
        return curve[0][0]
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return None


def paired_table(final: dict[str, Sequence[float]], arms: Sequence[str], baseline: str,
                 extras: dict[str, dict[str, Sequence[float]]] | None = None) -> list[str]:
    """Markdown rows: per arm its eval loss (95% CI over seeds), the paired
    difference to `baseline` with its interval and SE multiple, and one
    column per `extras` entry, name -> {arm: per-seed values} ('-' for an
    arm without values)."""
    from experiments.harness import stats

    extras = extras or {}
    cell = lambda values: stats.fmt_ci(stats.mean_ci(values), sign=False) if values else "-"
    rows = [f"| arm | eval loss (95% CI) | arm - {baseline} (paired, 95% CI) | diff / SE |"
            + "".join(f" {name} (95% CI) |" for name in extras),
            "|---|---|---|---|" + "---|" * len(extras)]
    for arm in arms:
        if arm == baseline:
            diff, z = "-", "-"
        else:
            d = stats.paired(final[arm], final[baseline])
            diff, z = stats.fmt_ci(d), f"{d['z']:+.1f}"
        rows.append(f"| {arm} | {cell(final[arm])} | {diff} | {z} |"
                    + "".join(f" {cell(values.get(arm))} |" for values in extras.values()))
    return rows


def slug(arm: str) -> str:
    """A run directory name for an arm: 'top-1 (Switch)' -> 'top_1_switch'."""
    return re.sub(r"[^a-z0-9]+", "_", arm.lower()).strip("_")


def numeric_table(first: str, columns: Sequence[str], rows: dict[str, Sequence[float]],
                  digits: int) -> str:
    """A markdown table with one row of numbers per arm."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {arm} | " + " | ".join(f"{v:.{digits}f}" for v in values) + " |"
              for arm, values in rows.items()]
    return "\n".join(lines)


def code_version(checkout: str | None = None) -> str | None:
    """`git describe --always` of the experiments' checkout (or `checkout`),
    with "-dirty" when a tracked file outside results/ has changed; None
    outside git. It names the code that made a results.json, since the
    numbers move when routing code changes. results/ is left out because an
    experiment rewrites its own committed plots before its results.json, so
    a plain `--dirty` would mark every rerun's stamp."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                              check=True, cwd=checkout or os.path.dirname(os.path.abspath(__file__))
                              ).stdout.strip()

    try:
        describe = git("describe", "--always")
        changed = git("status", "--porcelain", "--untracked-files=no", "--",
                      ":(top)", ":(top,exclude)results")
    except (OSError, subprocess.SubprocessError):
        return None
    return (describe + "-dirty" * bool(changed)) or None


def write_results(out: str, table: str, results: dict) -> None:
    """table.md and results.json (stamped with `code_version()`); a results
    dict with a "precondition" or "claims" entry must follow the shared
    schema (experiments.harness.stats)."""
    if "precondition" in results or "claims" in results:
        from experiments.harness.stats import check_schema

        check_schema(results)
    results = {**results, "code": code_version()}
    if results["code"]:
        table = f"{table.rstrip()}\n\nCode: `{results['code']}` (git describe).\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

