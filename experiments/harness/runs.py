"""Running arms: one progress bar over every (arm, seed) in a pool of
single-threaded worker processes, and tiny-T5 runs that are resumed or
copied from a finished twin (same config fingerprint) instead of trained
again."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence

from experiments.harness.args import ROOT
from experiments.harness.probes import t5_fact_recall, t5_routing_nmi


def non_default(obj):
    """A config as nested dicts of only the fields that differ from their
    defaults, so that a field added later (at its default) leaves stored
    fingerprints and finished runs valid."""
    if not dataclasses.is_dataclass(obj):
        return obj
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            out[f.name] = non_default(value)
    return out


def fingerprint(cfg) -> str:
    """What makes two TrainConfigs the same run: the one test of config
    identity (run_t5's run directories, the leaderboard's stored arms)."""
    return hashlib.sha1(json.dumps(non_default(cfg), sort_keys=True, default=str)
                        .encode()).hexdigest()[:16]


def saved_fingerprint(workdir: str) -> str | None:
    """The fingerprint of the config a run directory was trained with; None
    when there is none or it no longer parses (a field since removed)."""
    from moejax.structured import from_mapping
    from moejax.train.config import TrainConfig

    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return fingerprint(from_mapping(TrainConfig, json.load(f)))
    except (OSError, ValueError, TypeError):
        return None


# Where run_t5 looks for a finished run of the same config to copy instead of
# training it: every experiment's run directories. The experiments share arms
# (the testbed's dense run is an arm of five of them, its top-2 MoE of four),
# so a run of one trains only the arms no other experiment has trained.
SHARED_RUNS = os.path.join(ROOT, "results", "*", "runs", "*")


def _finished(workdir: str, steps: int) -> bool:
    from moejax.train.metrics import read_metrics

    try:
        return max(read_metrics(workdir)[0], default=0) >= steps
    except (OSError, ValueError):
        return False


def finished_twin(cfg, workdir: str) -> str | None:
    """A run directory matching SHARED_RUNS, other than `workdir`, that
    trained `cfg` (same `fingerprint`) to its last step; None if none did."""
    want = fingerprint(cfg)
    for run in sorted(glob.glob(SHARED_RUNS)):
        if (os.path.abspath(run) != os.path.abspath(workdir)
                and saved_fingerprint(run) == want and _finished(run, cfg.steps)):
            return run
    return None


def run_t5(cfg, workdir: str, routing_nmi: bool = False, fact_recall: bool = False,
           imports: Sequence[str] = ()) -> dict:
    """Trains `cfg` in `workdir` and returns its curves. A finished run of the
    same config (by `fingerprint`) in `workdir` is resumed, which is instant;
    one of another config there is deleted first; where `workdir` holds no
    finished run, a `finished_twin` is copied there instead of training.
    Returns 'train': [(step, cross-entropy)] and 'eval': [(step,
    eval loss)]; 'last_eval': the final evaluation's metrics (per-layer
    expert load and experts-per-token histograms included); 'late_train':
    each scalar train metric averaged over the second half of training;
    with routing_nmi, 'nmi': `t5_routing_nmi` (a generated corpus with
    domains, MoE encoder); with fact_recall, 'recall': `t5_fact_recall`.
    `imports`: modules to import first (they register user routers, which a
    fresh worker process does not know). Experiments run it in worker
    processes: keep it module-level."""
    for module in imports:
        importlib.import_module(module)
    from moejax.train.metrics import read_metrics
    from moejax.train.trainer import train

    if os.path.exists(workdir) and saved_fingerprint(workdir) != fingerprint(cfg):
        shutil.rmtree(workdir)  # an earlier run of another config: never resume (or reuse) it
    if not _finished(workdir, cfg.steps) and (twin := finished_twin(cfg, workdir)):
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.copytree(twin, workdir)
    train(cfg, workdir)
    rows, evals = read_metrics(workdir)
    if max(rows, default=0) < cfg.steps:  # the trainer returns after saving on SIGTERM
        raise RuntimeError(f"run {workdir} stopped at step {max(rows, default=0)} of {cfg.steps} "
                           "(interrupted); rerun the experiment to resume it")
    late = [rows[s] for s in sorted(rows) if s > cfg.steps // 2]
    extra = {"nmi": t5_routing_nmi(cfg, workdir)} if routing_nmi else {}
    if fact_recall:
        extra["recall"] = t5_fact_recall(cfg, workdir)
    return {**extra, "train": [(s, rows[s]["cross_entropy"]) for s in sorted(rows)],
            "eval": [(s, evals[s]["eval_loss"]) for s in sorted(evals)],
            "last_eval": evals[max(evals)],
            "late_train": {k: statistics.fmean(r[k] for r in late) for k, v in late[0].items()
                           if isinstance(v, float)}}



def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)



LIVE_EVERY_S = 10.0


def live_runs(log_dir: str, count: int) -> str:
    """'testbed_top2_0 step 340 loss 2.117, ...': the last logged step of the
    `count` runs under log_dir whose metrics changed most recently."""
    files = sorted(glob.glob(os.path.join(log_dir, "*", "metrics.jsonl")),
                   key=lambda f: os.path.getmtime(f) if os.path.exists(f) else 0.0)
    shown = []
    for path in files[::-1][:count]:
        try:
            with open(path, "rb") as f:
                # Rows of a model with many MoE layers run to several KB
                # (per-layer load vectors): read enough for the last few.
                start = max(0, os.path.getsize(path) - 65536)
                f.seek(start)
                lines = f.read().decode(errors="ignore").splitlines()[1 if start else 0:]
            rows = [json.loads(line) for line in lines if line.strip().startswith("{")]
        except (OSError, ValueError):
            continue
        train = [r for r in rows if "loss" in r and "eval_loss" not in r]
        if train:
            shown.append(f"{os.path.basename(os.path.dirname(path))} step {train[-1]['step']} "
                         f"loss {train[-1]['loss']:.3f}")
    return ", ".join(shown) or "compiling"


def run_arms(arms: dict[str, Callable[[int], Callable[[], object]]], seeds: int, desc: str,
             jobs: int = 1, log_dir: str | None = None,
             after: dict[str, str] | None = None) -> dict[str, list]:
    """{arm: [result per seed]} with one progress bar over all runs.

    arms[name](seed) is the zero-argument call that runs seed `seed` of the
    arm. With jobs > 1 the calls run in that many spawned single-threaded
    worker processes (experiments.harness.worker; their output goes to
    `log_dir`, default $TMPDIR/moejax_workers), so each must pickle: a
    functools.partial of a module-level function (not one defined in an
    experiment's __main__) with picklable arguments.
    `after` {arm: earlier arm}: seed s of arm starts once seed s of the
    earlier arm has finished (an upcycled run needs its seed's pretrained
    checkpoint), in the same pool, so no worker idles at a phase's end.
    A run's result does not depend on the worker it ran in, up to float
    summation order (one XLA thread instead of several)."""
    after = after or {}
    if unknown := sorted({name for pair in after.items() for name in pair} - set(arms)):
        raise ValueError(f"run_arms: after names {unknown}, not arms of {sorted(arms)}")
    for start in after:  # a cycle would leave its runs waiting forever, their results None
        chain = [start]
        while chain[-1] in after:
            chain.append(after[chain[-1]])
            if chain[-1] in chain[:-1]:
                raise ValueError(f"run_arms: after has a cycle {' -> '.join(chain)}")
    ready = [(name, seed) for seed in range(seeds) for name in arms if name not in after]
    out = {name: [None] * seeds for name in arms}
    bar = progress(seeds * len(arms), desc)

    def finished(name: str, seed: int, result) -> list[tuple[str, int]]:
        """Stores a result; returns the runs it lets start."""
        out[name][seed] = result
        bar.update(1)
        return [(later, seed) for later, first in after.items() if first == name]

    if jobs <= 1:
        while ready:
            name, seed = ready.pop(0)
            bar.set_postfix_str(f"{name} seed {seed}")
            ready += finished(name, seed, arms[name](seed)())
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from experiments.harness import worker

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=worker.init, initargs=(log_dir or os.path.join(
                                     tempfile.gettempdir(), "moejax_workers"),)) as pool:
            submit = lambda runs: {pool.submit(arms[n](s)): (n, s) for n, s in runs}
            pending = submit(ready)
            bar.write(f"{desc}: worker logs and runs in {log_dir or tempfile.gettempdir()}")
            while pending:
                done, _ = wait(pending, timeout=LIVE_EVERY_S, return_when=FIRST_COMPLETED)
                if not done and log_dir:  # a sign of life between finished runs
                    bar.set_postfix_str(live_runs(log_dir, jobs))
                for future in done:
                    name, seed = pending.pop(future)
                    bar.set_postfix_str(f"done {name} seed {seed}")
                    pending.update(submit(finished(name, seed, future.result())))
    bar.close()
    return out
