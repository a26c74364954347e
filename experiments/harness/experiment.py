"""An experiment is declared, not written out: its arms, its analysis and its
plots. `main` does the rest, the same way for every experiment.

    EXPERIMENT = Experiment(name="my_question", doc=__doc__, arms=arms,
                            analyse=analyse, plots=plots)

    if __name__ == "__main__":
        main(EXPERIMENT)

- `arms(args)` -> {arm: call}: `call(seed)` returns the zero-argument,
  picklable function (a functools.partial of a module-level function) that
  runs seed `seed` of the arm; see `runs.run_arms`.
- `analyse(args, runs)` -> Report: runs is {arm: [result per seed]}.
- `plots(results, out)` draws the PNGs from the results.json dict alone,
  so `--replot` can restyle a figure without training anything.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Hashable

from experiments.harness import stats
from experiments.harness.args import parse_args
from experiments.harness.report import write_results
from experiments.harness.runs import run_arms

Arms = dict[Hashable, Callable[[int], Callable[[], object]]]


@dataclasses.dataclass(frozen=True)
class Report:
    """What an experiment's analysis found.

    precondition: one `stats.precondition(...)`, or {part: precondition}.
    claims: `stats.claim(...)` rows, in the order the table lists them.
    setup: one paragraph on what was trained (the harness prefixes the
      size, seeds, minutes and jobs).
    sections: markdown blocks (tables, precondition lines) before the claims.
    results: JSON-able numbers for results.json, including everything
      `plots` draws (per-seed values, curves).
    notes: markdown after the claims table.
    """

    precondition: dict
    claims: list[dict]
    setup: str
    sections: list[str]
    results: dict
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One research question; see the module docstring.

    after: {arm: earlier arm}: seed s of arm starts once seed s of the
      earlier arm finished (an upcycled run needs its seed's checkpoint).
    vmapped: each arm's call trains every seed at once and returns the list
      of per-seed results (one call per arm instead of one per seed).
    """

    name: str
    doc: str
    arms: Callable[[argparse.Namespace], Arms]
    analyse: Callable[[argparse.Namespace, dict], Report]
    plots: Callable[[dict, str], None] | None = None
    after: dict = dataclasses.field(default_factory=dict)
    default_seeds: dict[str, int] | None = None
    vmapped: bool = False


def run(experiment: Experiment, args: argparse.Namespace) -> dict:
    """Trains (or reuses) every arm, analyses, writes table.md, results.json
    and the plots to args.out; returns the results dict."""
    start = time.time()
    runs = run_arms(experiment.arms(args), 1 if experiment.vmapped else args.seeds,
                    experiment.name, args.jobs, os.path.join(args.out, "runs"),
                    after=experiment.after)
    if experiment.vmapped:
        runs = {arm: per_call[0] for arm, per_call in runs.items()}
    report = experiment.analyse(args, runs)
    minutes = (time.time() - start) / 60
    table = "\n".join([
        f"`--{args.size}`: {args.seeds} paired seeds, {minutes:.1f} minutes on this machine "
        f"({args.jobs} jobs). {report.setup}", "", *report.sections,
        stats.claims_table(report.claims), *report.notes])
    results = {"size": args.size, "seeds": args.seeds, "minutes": minutes,
               "precondition": report.precondition, "claims": report.claims, **report.results}
    # Plots draw what results.json holds, exactly as a later --replot reads it.
    results = json.loads(json.dumps(results))
    if experiment.plots:
        experiment.plots(results, args.out)
    write_results(args.out, table, results)
    print(table)
    return results


def replot(experiment: Experiment, out: str) -> None:
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    if experiment.plots:
        experiment.plots(results, out)
    print(f"{experiment.name}: plots redrawn in {out} from its results.json")


def main(experiment: Experiment, argv: list[str] | None = None) -> None:
    args = parse_args(experiment.name, experiment.doc, experiment.default_seeds, argv)
    if args.replot:
        replot(experiment, args.out)
    else:
        run(experiment, args)
