"""Command-line arguments every experiment shares, and where results go."""
from __future__ import annotations

import argparse
import os

import jax

from moejax import cli

# The repository root: results/<experiment>/ is the default output.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SEEDS = {"quick": 3, "full": 5, "smoke": 2}


def parser(name: str, doc: str, default_seeds: dict[str, int] | None = None
           ) -> argparse.ArgumentParser:
    """The flags every experiment takes; an experiment may add its own before
    `prepare` reads them."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      help="<= 15 minutes on 2 CPU cores (the default)")
    size.add_argument("--full", action="store_const", dest="size", const="full",
                      help="longer runs, more data")
    # A few steps of every arm, 2 seeds: tests run each experiment end to end.
    size.add_argument("--smoke", action="store_const", dest="size", const="smoke",
                      help=argparse.SUPPRESS)
    p.add_argument("--seeds", type=int, default=None,
                   help="paired random seeds per arm (>= 3; default 3 quick, 5 full)")
    p.add_argument("--out", default=None,
                   help=f"where table.md, results.json and the plots go (default: "
                        f"results/{name})")
    p.add_argument("--jobs", type=int, default=available_cores(),
                   help="runs at a time, each in its own single-threaded process "
                        "(default: the cores this process may use)")
    p.add_argument("--replot", action="store_true",
                   help="redraw the plots from --out's results.json without training")
    p.set_defaults(experiment=name, default_seeds=default_seeds or SEEDS)
    return p


def prepare(args: argparse.Namespace) -> argparse.Namespace:
    """Checks the shared flags (one line naming the bad value), fills in the
    defaults that depend on others and creates --out."""
    args.size = args.size or "quick"
    args.out = args.out or os.path.join(ROOT, "results", args.experiment)
    if args.seeds is None:  # `--seeds 0` is an explicit (and refused) choice, not the default
        args.seeds = args.default_seeds[args.size]
    if args.seeds < 3 and args.size != "smoke":
        cli.fail(f"--seeds must be >= 3 to report a spread, got {args.seeds}")
    if args.jobs < 1:
        cli.fail(f"--jobs must be >= 1, got {args.jobs}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        cli.fail(f"--out {args.out!r} is a file; give a directory for the results")
    if args.replot and not os.path.exists(os.path.join(args.out, "results.json")):
        cli.fail(f"--replot: {os.path.join(args.out, 'results.json')!r} does not exist; "
                 "run the experiment first")
    with cli.input_errors(OSError, explain=lambda e: f"--out {args.out!r} cannot be created ({e})"):
        os.makedirs(args.out, exist_ok=True)
    # Seeds of one arm run the same programs: compile each once (a persistent
    # cache keyed by program, jax version and flags, so it cannot change a result).
    # (The environment variable carries it into the worker processes.)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "runs", "jax_cache"))
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    return args


def parse_args(name: str, doc: str, default_seeds: dict[str, int] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    return prepare(parser(name, doc, default_seeds).parse_args(argv))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

