"""What the experiments share: arguments, the synthetic clustered task and
its MoE model, tiny T5-MoE runs through the trainer, routing statistics,
and writing results (table.md, results.json, PNG plots).

Synthetic task: K Gaussian clusters in d dimensions; cluster k has its own
target function, a random tanh network with `widths[k]` hidden units
(wider = more complex). The model is a stack of residual MoE blocks
(moejax.layers.MoeLayer with any RouterConfig) between linear maps, trained
with Adam on the squared error; test loss is measured on fresh draws.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from typing import Callable, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.metrics import normalized_mutual_info_score

from moejax import cli
from moejax.layers import MOE_COLLECTION, MoeLayer
from moejax.models import moe_outputs
from moejax.routing import RouterConfig, route
from moejax.routing.base import experts_per_token
from moejax.train import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(name: str, doc: str, default_seeds: dict[str, int] | None = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      help="<= 15 minutes on 2 CPU cores (the default)")
    size.add_argument("--full", action="store_const", dest="size", const="full",
                      help="longer runs, more data")
    # A few steps of every arm, 2 seeds: tests run each experiment end to end.
    size.add_argument("--smoke", action="store_const", dest="size", const="smoke",
                      help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=None,
                        help="paired random seeds per arm (>= 3; default 3 quick, 5 full)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", name),
                        help="where table.md, results.json and the plots go")
    parser.add_argument("--jobs", type=int, default=available_cores(),
                        help="runs at a time, each in its own single-threaded process "
                             "(default: the cores this process may use)")
    args = parser.parse_args()
    args.size = args.size or "quick"
    if args.seeds is None:  # `--seeds 0` is an explicit (and refused) choice, not the default
        args.seeds = (default_seeds or {"quick": 3, "full": 5, "smoke": 2})[args.size]
    if args.seeds < 3 and args.size != "smoke":
        cli.fail(f"--seeds must be >= 3 to report a spread, got {args.seeds}")
    if args.jobs < 1:
        cli.fail(f"--jobs must be >= 1, got {args.jobs}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        cli.fail(f"--out {args.out!r} is a file; give a directory for the results")
    with cli.input_errors(OSError, explain=lambda e: f"--out {args.out!r} cannot be created ({e})"):
        os.makedirs(args.out, exist_ok=True)
    # Seeds of one arm run the same programs: compile each once (a persistent
    # cache keyed by program, jax version and flags, so it cannot change a result).
    # (The environment variable carries it into the worker processes.)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "runs", "jax_cache"))
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    return args


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def mean_curve(runs: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The seed-mean of curves logged at the same steps."""
    return [(s, float(np.mean([run[i][1] for run in runs]))) for i, (s, _) in enumerate(runs[0])]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step at which the piecewise-linear `curve` [(step, loss)] is <=
    target; None if it never is."""
    if curve and curve[0][1] <= target:
        return curve[0][0]
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return None


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
    schema (experiments.stats)."""
    if "precondition" in results or "claims" in results:
        from experiments.stats import check_schema

        check_schema(results)
    results = {**results, "code": code_version()}
    if results["code"]:
        table = f"{table.rstrip()}\n\nCode: `{results['code']}` (git describe).\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


# --- the synthetic clustered task -------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """K clusters in `dim` dimensions, cluster k's target a tanh network of
    widths[k] units; `separation` scales the distance between centres."""

    widths: tuple[int, ...] = (8, 8, 8, 8)
    dim: int = 16
    out_dim: int = 4
    separation: float = 3.0
    noise: float = 0.5
    seed: int = 0

    @property
    def num_clusters(self) -> int:
        return len(self.widths)

    def _teacher(self):
        rng = np.random.RandomState(self.seed)
        centres = rng.randn(self.num_clusters, self.dim) * self.separation / np.sqrt(2)
        nets = [(rng.randn(self.dim, w) * 1.5 / np.sqrt(self.dim),
                 rng.randn(w, self.out_dim) / np.sqrt(w)) for w in self.widths]
        return centres, nets

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x [n, dim], cluster [n], y [n, out_dim]), float32 / int."""
        centres, nets = self._teacher()
        rng = np.random.RandomState(seed)
        cluster = rng.randint(self.num_clusters, size=n)
        x = centres[cluster] + self.noise * rng.randn(n, self.dim)
        y = np.zeros((n, self.out_dim))
        for k, (w1, w2) in enumerate(nets):
            sel = cluster == k
            y[sel] = np.tanh((x[sel] - centres[k]) @ w1 / self.noise) @ w2
        return x.astype(np.float32), cluster, y.astype(np.float32)


class ClusterMoE(nn.Module):
    """x [G, T, dim] -> layers x (h + MoE(n_i(h))) -> Dense(out), h starting at
    x; n_0 is the identity, so the first router (frozen or learned) routes
    the raw inputs with no learnable scale in front of it, as in Dikkala et
    al.; later layers see RMSNorm(h) without a scale."""

    router: RouterConfig
    d_ff: int = 32
    layers: int = 1
    out_dim: int = 4

    @nn.compact
    def __call__(self, x, token_ids, *, deterministic=True):
        h = x
        for i in range(self.layers):
            inputs = h if i == 0 else nn.RMSNorm(use_scale=False, name=f"norm_{i}")(h)
            h = h + MoeLayer(self.router, d_ff=self.d_ff, activations=("gelu",), name=f"moe_{i}")(
                inputs, token_ids=token_ids, deterministic=deterministic)
        return nn.Dense(self.out_dim, name="out")(h)


def _groups(a: np.ndarray, group: int) -> np.ndarray:
    return a.reshape(-1, group, *a.shape[1:])


@dataclasses.dataclass
class SyntheticRun:
    """Results of one synthetic training run."""

    test_loss: float
    loss_curve: list[tuple[int, float]]
    test_loss_per_cluster: list[float]
    nmi: list[tuple[int, list[float]]]  # (step, per layer)
    confusion: list[tuple[int, list[list[float]]]]  # (step, [cluster][expert]) of layer 0
    experts_per_token: list[float]  # per layer
    experts_per_token_per_cluster: list[list[float]]  # [layer][cluster]
    dropped_fraction: list[float]  # per layer


def routing_counts(router: RouterConfig, logits: jax.Array) -> np.ndarray:
    """Experts each token gets [G, T] when `router` (eval mode) routes `logits`."""
    result = route(router, logits)
    return np.asarray(experts_per_token(result.token, result.valid, logits.shape[1]))


def train_synthetic(task: ClusterTask, router: RouterConfig, *, steps: int, seed: int,
                    layers: int = 1, d_ff: int = 32, group: int = 64, batch_groups: int = 8,
                    lr: float = 3e-3, snapshots: int = 5, vocab: int = 4096) -> SyntheticRun:
    """Trains ClusterMoE on `task`; test metrics on 4096 fresh points."""
    model = ClusterMoE(router, d_ff=d_ff, layers=layers, out_dim=task.out_dim)
    n_train = steps * batch_groups * group
    x, _, y = task.sample(n_train, seed=1000 + seed)
    ids = np.random.RandomState(seed).randint(vocab, size=n_train)  # hash-router token ids
    xt, ct, yt = task.sample(4096, seed=10_000_019)
    idt = np.random.RandomState(99).randint(vocab, size=4096)
    xt, idt = jnp.asarray(_groups(xt, group)), jnp.asarray(_groups(idt, group))
    boxed = model.init(jax.random.key(seed), xt[:1], idt[:1])
    variables = nn.unbox(boxed)
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    opt = optim.freeze(optax.adam(lr), optim.frozen_labels(boxed["params"]))  # router 'frozen'
    opt_state = opt.init(params)

    def loss_fn(p, xb, idb, yb, rng):
        pred, state = model.apply({"params": p, **rest}, xb, idb, deterministic=False,
                                  rngs={"router": rng}, mutable=[MOE_COLLECTION])
        aux, _ = moe_outputs(state[MOE_COLLECTION])
        return jnp.mean(jnp.square(pred - yb)) + aux

    @jax.jit
    def step(p, s, xb, idb, yb, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, idb, yb, rng)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def evaluate(p):
        pred, state = model.apply({"params": p, **rest}, xt, idt, mutable=[MOE_COLLECTION],
                                  capture_intermediates=lambda m, name: name == "router_logits")
        _, metrics = moe_outputs(state[MOE_COLLECTION])
        logits = [state["intermediates"][f"moe_{i}"]["router_logits"][0] for i in range(layers)]
        return jnp.mean(jnp.square(pred - yt.reshape(pred.shape)), axis=-1), logits, metrics

    yt = jnp.asarray(yt)
    curve, nmi, confusion = [], [], []
    snap_at = set(np.linspace(0, steps, snapshots).astype(int).tolist())
    xg, idg, yg = _groups(x, group), _groups(ids, group), _groups(y, group)
    rng = jax.random.key(seed + 7)
    for i in range(steps + 1):
        if i in snap_at:
            per_point, logits, _ = evaluate(params)
            chosen = [np.asarray(jnp.argmax(lg, -1)).reshape(-1) for lg in logits]
            nmi.append((i, [float(normalized_mutual_info_score(ct, c)) for c in chosen]))
            table = np.zeros((task.num_clusters, router.num_experts))
            np.add.at(table, (ct, chosen[0]), 1.0)
            confusion.append((i, (table / table.sum(1, keepdims=True)).tolist()))
            curve.append((i, float(jnp.mean(per_point))))
        if i == steps:
            break
        sl = slice(i * batch_groups, (i + 1) * batch_groups)
        params, opt_state, _ = step(params, opt_state, xg[sl], idg[sl], yg[sl],
                                    jax.random.fold_in(rng, i))
    per_point, logits, metrics = evaluate(params)
    per_point = np.asarray(per_point).reshape(-1)
    counts = [routing_counts(router, lg).reshape(-1) for lg in logits]
    return SyntheticRun(
        test_loss=float(per_point.mean()), loss_curve=curve,
        test_loss_per_cluster=[float(per_point[ct == k].mean()) for k in range(task.num_clusters)],
        nmi=nmi, confusion=confusion,
        experts_per_token=[float(c.mean()) for c in counts],
        experts_per_token_per_cluster=[[float(c[ct == k].mean()) for k in range(task.num_clusters)]
                                       for c in counts],
        dropped_fraction=[float(metrics[f"moe_{i}/dropped_fraction"]) for i in range(layers)])


# --- tiny T5-MoE runs ---------------------------------------------------------

def t5_config(size: str, seed: int, steps: int | None = None, evals: int = 5, **overrides):
    """The embedded default's model and data, shortened for experiments:
    inputs 64 / targets 16, batch 16, constant-after-warmup Adafactor;
    `steps` (default 150 quick, 1000 full) with `evals` evaluations."""
    from moejax.models import presets
    from moejax.train.config import (CheckpointConfig, DataConfig, OptimizerConfig,
                                     TokenizerConfig, TrainConfig)

    steps = steps or {"quick": 150, "full": 1000}[size]
    cfg = TrainConfig(
        model=dataclasses.replace(presets.tiny(), vocab_size=512),
        data=DataConfig(embedded_documents=3000 if size == "quick" else 20000,
                        embedded_eval_documents=100, inputs_length=64, targets_length=16),
        tokenizer=TokenizerConfig(vocab_size=400, train_documents=2000),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="constant",
                                  warmup_steps=20),
        checkpoint=CheckpointConfig(every_steps=0, keep=1, async_save=False),
        steps=steps, batch_size=16, eval_every_steps=steps // evals, eval_batches=2,
        log_every_steps=max(1, steps // 30), seed=seed)
    return dataclasses.replace(cfg, **overrides)


# The routing testbed (python -m experiments.testbed measures its precondition).
# `--quick` learns a table of 8 x 16 x 16 contexts in 800 steps: every
# experiment's quick run then fits 15 minutes on 2 cores with room for its
# arms, and the MoE is ahead of dense by the end (5.0 paired SE over the 3
# quick seeds, 2026-12-03). The 8 x 32 x 32 table of `--full` is only
# starting to be learned at step 1600 (the MoE's lead at 1600 steps was
# 2.8 SE over 3 seeds, 24.7 at 5000).
TESTBED_WORDS = {"quick": 16, "full": 32, "smoke": 16}
TESTBED_STEPS = {"quick": 800, "full": 5000, "smoke": 20}
TESTBED_EXPERTS = 16
TESTBED_K = 2


def testbed_config(size: str, seed: int, steps: int | None = None, evals: int = 5, **overrides):
    """The dense tiny T5 (d_ff 128) on the capacity-bound `markov` corpus
    (8 domains of TESTBED_WORDS[size] words, a random second-order chain each):
    inputs 64 / targets 16, batch 32, Adafactor at a constant 1e-2 after 20
    warm-up steps and a linear cooldown to 0 over the last quarter ('wsd':
    the cooldown quiets the end, so final losses compare), `steps` (default
    TESTBED_STEPS[size]) with `evals` evaluations of 8 held-out batches.
    Seed `seed` draws its own chains, data order and init, the same in every
    arm (paired seeds)."""
    from moejax.train.config import DataConfig, OptimizerConfig

    steps = steps or TESTBED_STEPS[size]
    cfg = t5_config(size, seed, steps=steps, evals=evals, batch_size=32,
                    eval_batches=8 if size != "smoke" else 2)
    if size == "smoke":  # plumbing only: one layer per stack halves the compile time
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, num_encoder_layers=1, num_decoder_layers=1))
    cfg = dataclasses.replace(
        cfg, data=DataConfig(source="markov", markov_words=TESTBED_WORDS[size],
                             embedded_documents=40000 if size != "smoke" else 1000,
                             embedded_eval_documents=400,
                             inputs_length=64, targets_length=16, seed=seed),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="wsd",
                                  warmup_steps=20, cooldown_steps=steps // 4))
    cfg = with_moe(cfg, dict(interval=0), dict(interval=0))
    return dataclasses.replace(cfg, **overrides)


def testbed_router(name: str = "top_k", **overrides) -> RouterConfig:
    """The testbed's router: TESTBED_EXPERTS experts, k = TESTBED_K with
    weights renormalised over the chosen experts (Mixtral / DeepSeek style),
    no capacity limit and no aux losses, so that neither drops nor a balance
    term confound the question whether experts pay off; `overrides` change
    any RouterConfig field."""
    fields = dict(num_experts=TESTBED_EXPERTS, k=TESTBED_K, normalize_weights=True,
                  capacity_factor=None, eval_capacity_factor=None, load_balance_weight=0.0,
                  z_loss_weight=0.0)
    return RouterConfig(name, **{**fields, **overrides})


def testbed_moe(cfg, router: RouterConfig | None = None, d_ff: int | None = None,
                interval: int = 1):
    """`cfg` (a testbed_config) with MoE FFNs in both stacks at every
    `interval`-th layer: `router` (default `testbed_router()`), experts of
    `d_ff` (default dense d_ff / k: equal active FLOPs)."""
    router = router or testbed_router()
    d_ff = d_ff or cfg.model.d_ff // router.k
    moe = dict(interval=interval, router=router, d_ff=d_ff)
    return with_moe(cfg, moe, moe)


def with_moe(cfg, encoder: dict | None = None, decoder: dict | None = None):
    """`cfg` with MoeConfig fields of the encoder / decoder stack replaced,
    e.g. encoder=dict(router=RouterConfig("switch"), d_ff=64, interval=1)."""
    model = cfg.model
    return dataclasses.replace(cfg, model=dataclasses.replace(
        model, encoder_moe=dataclasses.replace(model.encoder_moe, **(encoder or {})),
        decoder_moe=dataclasses.replace(model.decoder_moe, **(decoder or {}))))


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


def _saved_fingerprint(workdir: str) -> str | None:
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
                and _saved_fingerprint(run) == want and _finished(run, cfg.steps)):
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

    if os.path.exists(workdir) and _saved_fingerprint(workdir) != fingerprint(cfg):
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


def encoder_layers(row: dict, metric: str) -> list:
    """`metric` of every encoder MoE layer from a run's last evaluation row."""
    return [v for k, v in sorted(row.items())
            if k.startswith("eval_encoder/") and k.endswith("/" + metric)]


def _trained(cfg, workdir: str):
    """(vocabulary, variables, model) of the run `cfg` trained in `workdir`."""
    from moejax.data import tokenizer as tok
    from moejax.models.t5 import Transformer, abstract_params, as_variables
    from moejax.train.init import load_params

    vocab = tok.load(os.path.join(workdir, "tokenizer", "spm.model"), cfg.tokenizer.extra_ids)
    return vocab, as_variables(load_params(workdir, abstract_params(cfg.model))), \
        Transformer(cfg.model)


def _held_out_documents(cfg, documents: int):
    """The first `documents` held-out documents of a generated corpus with
    domains ('knowledge' or 'markov'): objects with .text, .domain and
    .cloze() (before, answer, after) triples."""
    from moejax.data import knowledge, markov
    from moejax.data.sources import EVAL_SEED_OFFSET

    d = cfg.data
    if d.source == "markov":
        return markov.walks(d.seed, d.markov_words, d.seed + EVAL_SEED_OFFSET, documents)
    if d.source != "knowledge":
        raise ValueError(f"routing NMI and recall need data.source 'knowledge' or 'markov' "
                         f"(a corpus with domains), got {d.source!r}")
    return [knowledge.knowledge_document(d.seed, d.knowledge_entities, d.seed + EVAL_SEED_OFFSET, i)
            for i in range(documents)]


def t5_routing_nmi(cfg, workdir: str, documents: int = 256) -> list[float]:
    """NMI between a held-out document's domain and the expert its tokens
    choose first (argmax of the router logits), per encoder MoE layer, for the
    model trained in `workdir` on a testbed_config `cfg`: the language
    analogue of the synthetic task's cluster/expert NMI. Evaluated on held-out
    documents (the eval stream) truncated to the input length."""
    from moejax.data import knowledge
    from moejax.models.t5 import Transformer

    d = cfg.data
    vocab, variables, model = _trained(cfg, workdir)
    docs = _held_out_documents(cfg, documents)
    tokens = np.zeros((documents, d.inputs_length), np.int32)
    for row, doc in enumerate(docs):
        ids = vocab.encode(doc.text)[:d.inputs_length]
        tokens[row, :len(ids)] = ids
    _, state = model.apply(variables, jnp.asarray(tokens), method=Transformer.encode,
                           capture_intermediates=lambda m, name: name == "router_logits",
                           mutable=["intermediates", MOE_COLLECTION])
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    domain = np.repeat([list(knowledge.DOMAINS).index(doc.domain) for doc in docs],
                       d.inputs_length)
    real = tokens.reshape(-1) > 0
    out = []
    for key in sorted(k for k in flat if k.endswith("router_logits")):
        chosen = np.asarray(jnp.argmax(flat[key][0], -1)).reshape(-1)
        out.append(float(normalized_mutual_info_score(domain[real], chosen[real])))
    return out


def cloze_batch(vocab, docs, inputs_length: int, targets_length: int):
    """Span-corruption examples that mask one answer each: per cloze triple
    of each document in `docs` (knowledge.Document: one per sentence;
    markov.Walk: one per word after the first two), inputs 'before
    <extra_id_0> after' and targets '<extra_id_0> answer <extra_id_1>', the
    format the model was trained on. Returns (encoder inputs [N, L],
    decoder inputs [N, T], targets [N, T], answer-token weights [N, T]);
    sentences whose answer falls past the input length are left out."""
    from moejax.data.objectives import EOS_ID

    rows = []
    for doc in docs:
        for before, answer, after in doc.cloze():
            head, ids = vocab.encode(before), vocab.encode(answer)
            if len(head) + 1 >= inputs_length or len(ids) + 2 > targets_length:
                continue
            x = np.concatenate([head, [vocab.sentinel(0)], vocab.encode(after), [EOS_ID]])
            y = np.concatenate([[vocab.sentinel(0)], ids, [vocab.sentinel(1), EOS_ID]])
            rows.append((x[:inputs_length], y, len(ids)))
    enc = np.zeros((len(rows), inputs_length), np.int32)
    tgt = np.zeros((len(rows), targets_length), np.int32)
    weights = np.zeros((len(rows), targets_length), np.float32)
    for r, (x, y, n) in enumerate(rows):
        enc[r, :len(x)], tgt[r, :len(y)], weights[r, 1:1 + n] = x, y, 1
    dec = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], 1)
    return enc, dec, tgt, weights


def t5_fact_recall(cfg, workdir: str, documents: int = 256) -> dict:
    """How much of its corpus's table the model trained in `workdir` recalls:
    each answer word of `documents` held-out documents masked alone
    (`cloze_batch`; knowledge: a fact's value or partner, chance 1 in 16;
    markov: every word after the first two, which the chain draws from
    the two before it, at most ~0.75 for a model that knows the table and
    reads one side), 'accuracy' the fraction predicted exactly (every token
    the argmax, teacher-forced) and 'cross_entropy' the mean over answers
    of their summed token cross-entropy (nats). On the knowledge corpus the
    eval loss mixes facts with copied names and template words; this
    isolates what was memorised."""
    vocab, variables, model = _trained(cfg, workdir)
    enc, dec, tgt, weights = cloze_batch(vocab, _held_out_documents(cfg, documents),
                                         cfg.data.inputs_length, cfg.data.targets_length)
    logits = model.apply(variables, jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tgt)))
    hit = np.asarray(jnp.argmax(logits, -1)) == tgt
    return {"accuracy": float(np.where(weights > 0, hit, True).all(1).mean()),
            "cross_entropy": float((ce * weights).sum(1).mean()), "answers": len(enc)}


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, figsize=(6, 4), dpi: int = 120):
    """(fig, axes) to draw on; saved to `path` as PNG on exit. axes is one
    Axes for a 1x1 grid, else an [nrows, ncols] array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=nrows * ncols == 1)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_curves(path: str, title: str, arms: dict[str, list[list[tuple[int, float]]]],
                ylabel: str, log_y: bool = False, band: str = "ci") -> None:
    """One line per arm: mean over seeds; band = 95% t interval of the mean
    ("ci") or min..max over seeds ("range")."""
    from experiments import stats

    with figure(path) as (_, ax):
        for name, runs in arms.items():
            steps = [s for s, _ in runs[0]]
            values = np.array([[v for _, v in run] for run in runs])
            if band == "ci" and len(runs) > 1:
                lo, hi = np.array([stats.mean_ci(values[:, i])["ci95"]
                                   for i in range(len(steps))]).T
            else:
                lo, hi = values.min(0), values.max(0)
            ax.plot(steps, values.mean(0), label=name)
            ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"{title}\n(mean over seeds, {'95% CI' if band == 'ci' else 'min-max'} band)",
                     fontsize=10)
        ax.legend(fontsize=8)


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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
                start = max(0, os.path.getsize(path) - 4096)
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
    worker processes (experiments.worker; their output goes to
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

        from experiments import worker

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
