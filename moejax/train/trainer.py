"""The training loop, for pretraining and fine-tuning alike (and, with
--eval_only, evaluation): config -> mesh, data, state -> jitted steps ->
checkpoints.

Every input is checked before compute (mesh vs devices, batch vs the
data-parallel size, tokenizer and data paths, vocabulary vs model). The loop
resumes from the workdir's latest checkpoint, saves on SIGTERM and exits
cleanly, and stops on a non-finite loss without saving the bad state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from moejax.data import tokenizer as tok
from moejax.data.objectives import Objective
from moejax.data.pipeline import Pipeline, Prefetch
from moejax.data.sources import check_paths
from moejax.dispatch import grouped_kernel
from moejax.files import absolute, check_writable
from moejax.layers.attention import resolve_attention
from moejax.models import ROUTER_STATE, Transformer, abstract_params
from moejax.models.decoding import generate
from moejax.structured import to_mapping
from moejax.tasks.evaluate import check_eval_data, evaluate_tasks
from moejax.train import console, optim
from moejax.train.checkpoint import BEST_METRIC, Checkpoints
from moejax.train.config import TrainConfig
from moejax.train.init import load_params, upcycled_params
from moejax.train.lock import WorkdirLock, WorkdirLocked
from moejax.train.metrics import MetricWriter, flatten
from moejax.train.partitioning import Layout
from moejax.train.step import make_eval_step, make_train_step, model_variables
from moejax.train.traces import RoutingTracer
from moejax.train.vocabulary import vocabulary

log = logging.getLogger("moejax.train")


class NonFiniteLoss(FloatingPointError):
    pass


@dataclasses.dataclass
class Setup:
    """Everything derived from the config before the first step."""

    cfg: TrainConfig
    workdir: str
    layout: Layout
    vocab: tok.Vocabulary
    objective: Objective
    model: Transformer
    shards: list[int]
    num_shards: int
    batch_spec: dict[str, jax.ShapeDtypeStruct] | None  # a global batch; None for --eval_only


def setup(cfg: TrainConfig, workdir: str, for_training: bool = True) -> Setup:
    """Validates the config against the devices and data; no compute yet.
    for_training=False (--eval_only) checks just the splits evaluation decodes."""
    m = cfg.mesh
    layout = Layout.create(m.data, m.model, m.expert, m.expert_axis)
    layout.check_rows(cfg.batch_size // cfg.grad_accum_steps,
                      f"batch_size={cfg.batch_size} / grad_accum_steps={cfg.grad_accum_steps}")
    try:  # the kernels named in the config exist on this backend?
        resolve_attention(cfg.model.attention, dtype=cfg.model.compute_dtype,
                          head_dim=cfg.model.kv_dim, dropout_rate=cfg.model.dropout_rate)
    except ValueError as e:
        raise ValueError(f"model.{e}") from None
    for name in ("encoder_moe", "decoder_moe"):
        impl = getattr(cfg.model, name).grouped_matmul
        try:
            grouped_kernel(impl, cfg.model.compute_dtype)
        except ValueError as e:
            raise ValueError(f"model.{name}.{e}") from None
    processes = jax.process_count()
    num_shards = cfg.data.num_shards or processes
    if num_shards % processes or cfg.batch_size % num_shards:
        raise ValueError(f"data.num_shards={num_shards} must be a multiple of the {processes} "
                         f"processes and divide batch_size={cfg.batch_size}")
    per_process = num_shards // processes
    shards = list(range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process))
    if for_training:
        check_paths(cfg.data, ("train", "eval") if cfg.eval_every_steps else ("train",))
    else:
        check_eval_data(cfg.data.task, cfg.data.eval_split, cfg.data.tfds_data_dir)
    vocab = vocabulary(cfg, workdir, num_shards)
    if vocab.size > cfg.model.vocab_size:
        raise ValueError(f"the tokenizer has {vocab.size} ids (pieces + {cfg.tokenizer.extra_ids} "
                         f"sentinels) but model.vocab_size={cfg.model.vocab_size}; raise "
                         f"model.vocab_size or lower tokenizer.vocab_size")
    d = cfg.data
    objective = Objective(d.objective, d.inputs_length, d.targets_length, d.noise_density,
                          d.mean_noise_span_length)
    objective.check_lengths()
    batch_spec = None
    if for_training:
        # One row of the first shard of each split read: a source that gives
        # no example at all fails here, before any compute and with nothing
        # left behind.
        for split in ("train", "eval") if cfg.eval_every_steps else ("train",):
            row = next(iter(Pipeline(d, vocab, objective, split, 1, shards[:1], num_shards)))
        batch_spec = {k: jax.ShapeDtypeStruct((cfg.batch_size, *v.shape[1:]), v.dtype)
                      for k, v in row.items()}
    model = Transformer(cfg.model, mesh=layout.mesh, expert_axis=cfg.mesh.expert_axis)
    return Setup(cfg, workdir, layout, vocab, objective, model, shards, num_shards, batch_spec)


def _init_fns(s: Setup, optimizer) -> tuple[Callable, Callable]:
    """Jitted (init: rng -> fresh state, state_from: params -> state), both
    placed on the mesh. state_from starts the optimizer on given params, so a
    fine-tuning run never draws (and holds) a second, random set."""
    # Param shapes do not depend on the mesh; initialising without it keeps
    # the one-token init out of the expert-parallel path (it needs groups).
    plain = Transformer(s.cfg.model)
    tokens = jnp.ones((1, 1), jnp.int32)
    make = lambda rng: plain.init({"params": rng, "router": rng}, tokens, tokens)
    router_state = nn.unbox(jax.eval_shape(make, jax.random.key(0))).get(ROUTER_STATE)

    def state_from(params):
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": optimizer.init(params)}
        if router_state:
            # Router state starts at its initial values (moejax.routing.state:
            # a zero selection bias, the relu router's relu_l1_init), fine-tuning
            # included. They do not depend on the key, and under jit only
            # those constants of the init survive.
            state[ROUTER_STATE] = nn.unbox(make(jax.random.key(0)))[ROUTER_STATE]
        return state

    def init(rng):
        return state_from(nn.unbox(make(rng))["params"])

    param_shardings = s.layout.param_shardings(abstract_params(s.cfg.model, boxed=True))
    # The optimizer state's shardings follow from the params' by propagation.
    out = {"step": s.layout.replicated, "params": param_shardings, "opt_state": None,
           **({ROUTER_STATE: s.layout.replicated} if router_state else {})}
    return (jax.jit(init, out_shardings=out),
            jax.jit(state_from, in_shardings=(param_shardings,), out_shardings=out,
                    donate_argnums=0))


def global_batch(s: Setup, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(s.layout.batch_sharding, v)
            for k, v in local.items()}


def eval_batches(s: Setup) -> list[dict[str, jax.Array]]:
    """The first cfg.eval_batches batches of the held-out split, on the
    devices; every evaluation reuses them."""
    rows = s.cfg.batch_size // s.num_shards
    pipeline = Pipeline(s.cfg.data, s.vocab, s.objective, "eval", rows, s.shards, s.num_shards)
    batches = [global_batch(s, b) for _, b in zip(range(s.cfg.eval_batches), pipeline)]
    if not batches:
        raise ValueError("the eval split produced no batches")
    return batches


def evaluate(eval_step, variables, batches) -> dict[str, float]:
    """Mean metrics over `batches`; variables: `model_variables(state)`."""
    totals = {}
    for batch in batches:
        for k, v in jax.device_get(eval_step(variables, batch)).items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v)
    return {k: v / len(batches) for k, v in totals.items()}


@dataclasses.dataclass
class Steps:
    init: Callable  # rng -> state, placed on the mesh
    state_from: Callable  # params -> state (step 0, fresh optimizer state); donates params
    train_step: Callable  # (state, batch) -> (state, metrics); donates state
    eval_step: Callable  # (model_variables(state), batch) -> metrics
    abstract_state: Any  # ShapeDtypeStructs with the state's shardings


def compile_steps(s: Setup) -> Steps:
    """The jitted init / train / eval functions with explicit shardings."""
    cfg = s.cfg
    labels = optim.frozen_labels(abstract_params(cfg.model, boxed=True), cfg.freeze_router,
                                 cfg.freeze_experts)
    optimizer = optim.optimizer(cfg.optimizer, cfg.steps, labels)
    lr_schedule = optim.schedule(cfg.optimizer, cfg.steps)
    init, state_from = _init_fns(s, optimizer)
    with s.layout.context():
        state_shardings = init.lower(jax.random.key(0)).compile().output_shardings
        abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                jax.eval_shape(init, jax.random.key(0)), state_shardings)
        train_step = jax.jit(
            make_train_step(s.model, optimizer, lr_schedule, cfg.seed, cfg.z_loss,
                            cfg.grad_accum_steps),
            in_shardings=(state_shardings, s.layout.batch_sharding),
            out_shardings=(state_shardings, None),
            donate_argnums=0)
        eval_step = jax.jit(make_eval_step(s.model, cfg.z_loss),
                            in_shardings=(model_variables(state_shardings),
                                          s.layout.batch_sharding))
        if s.batch_spec:
            # Tracing now (jit reuses the trace at the first call) puts
            # errors that only the model's shapes reveal, such as a group
            # size that does not divide the tokens, before the first step.
            train_step.trace(abstract, s.batch_spec)
            if cfg.eval_every_steps:
                eval_step.trace(model_variables(abstract), s.batch_spec)
    return Steps(init, state_from, train_step, eval_step, abstract)


def make_predict(s: Setup, variables) -> Callable[[np.ndarray], np.ndarray]:
    """Greedy decoding of this host's share of a global batch of encoder
    tokens [batch_size, inputs_length] (every host passes the whole batch);
    returns all hosts' output tokens [batch_size, targets_length]."""
    share = s.cfg.batch_size // jax.process_count()
    mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)

    def predict(tokens: np.ndarray) -> np.ndarray:
        inputs = global_batch(s, {"tokens": tokens[mine]})["tokens"]
        out = generate(s.model, variables, inputs, max_length=s.cfg.data.targets_length).tokens
        return np.asarray(multihost_utils.process_allgather(out, tiled=True))

    return predict


def task_scores(s: Setup, variables, step: int) -> dict[str, float]:
    """Decodes the task source's evaluation sets on data.eval_split with
    `variables` (model_variables(state)); writes
    scores, tables and leaderboard files to <workdir>/eval/<split>_step_<step>/."""
    d = s.cfg.data
    out_dir = os.path.join(s.workdir, "eval", f"{d.eval_split}_step_{step}")
    return evaluate_tasks(d.task, d.eval_split, d.tfds_data_dir, s.vocab,
                          make_predict(s, variables), d.inputs_length, s.cfg.batch_size,
                          s.cfg.eval_examples, out_dir)


def _checkpoints(cfg: TrainConfig, workdir: str) -> Checkpoints:
    return Checkpoints(os.path.join(absolute(workdir), "checkpoints"), cfg.checkpoint)


def _initial_state(s: Setup, steps: Steps, checkpoints: Checkpoints):
    """(state, data position): the workdir's latest checkpoint, else a fresh
    state whose params come from cfg.init_checkpoint when set."""
    latest = checkpoints.latest_step()
    if latest is not None:
        log.info("resuming from %s/checkpoints/%d", s.workdir, latest)
        return checkpoints.restore(latest, steps.abstract_state)
    if not s.cfg.init_checkpoint:
        return steps.init(jax.random.key(s.cfg.seed)), None
    cfg = s.cfg
    if cfg.upcycle:
        params = upcycled_params(cfg.init_checkpoint, cfg.model, steps.abstract_state["params"],
                                 cfg.upcycle_noise, cfg.seed)
    else:
        params = load_params(cfg.init_checkpoint, steps.abstract_state["params"])
    state = steps.state_from(params)
    log.info("params %s from %s", "upcycled" if cfg.upcycle else "initialised",
             cfg.init_checkpoint)
    return state, None


def evaluate_only(cfg: TrainConfig, workdir: str) -> dict[str, float]:
    """Scores the workdir's latest checkpoint (else cfg.init_checkpoint) on
    the task source's data.eval_split, without training."""
    if cfg.data.source != "task":
        raise ValueError("--eval_only decodes fine-tuning tasks: it needs data.source='task', "
                         f"got {cfg.data.source!r}")
    _make_workdir(workdir)
    s = setup(cfg, workdir, for_training=False)
    steps = compile_steps(s)
    checkpoints = _checkpoints(cfg, workdir)
    try:
        if checkpoints.latest_step() is None and not cfg.init_checkpoint:
            raise ValueError(f"--eval_only found no checkpoint in {workdir}/checkpoints and no "
                             "init_checkpoint to evaluate")
        with s.layout.context():
            state, _ = _initial_state(s, steps, checkpoints)
            return task_scores(s, model_variables(state), int(state["step"]))
    finally:
        checkpoints.close()


def _make_workdir(workdir: str) -> None:
    """Creates `workdir` (any filesystem) and checks that it takes files."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"workdir {workdir!r} is a file; give a directory (new or a "
                                 "run's, to resume it)")
    check_writable(path)


def train(cfg: TrainConfig, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training in `workdir`; returns the last logged metrics."""
    # A SIGTERM from here on stops after the next step, with a checkpoint.
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = None
    try:
        fresh = not epath.Path(workdir).exists()
        _make_workdir(workdir)
        lock = _lock(workdir)
        try:
            s = setup(cfg, workdir)
            if jax.process_index() == 0:
                (epath.Path(workdir) / "config.json").write_text(
                    json.dumps(to_mapping(cfg), indent=2))
            steps = compile_steps(s)
            checkpoints = _checkpoints(cfg, workdir)
            try:
                with s.layout.context():
                    initial = _initial_state(s, steps, checkpoints)
            except BaseException:
                checkpoints.close()
                raise
        except Exception:
            # A run that fails before its first step (its checks, or loading
            # init_checkpoint) leaves nothing behind, so the fixed command
            # starts afresh rather than resuming a half-made workdir.
            if fresh:
                with contextlib.suppress(OSError):
                    epath.Path(workdir).rmtree()
            raise
        with s.layout.context():
            return _loop(s, steps, checkpoints, initial, stop, lock)
    finally:
        if lock:
            lock.release()
        signal.signal(signal.SIGTERM, previous)


def _lock(workdir: str) -> WorkdirLock | None:
    """Process 0 takes the workdir's lock; every process raises
    WorkdirLocked when a live trainer holds it."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    error = None
    if lock:
        try:
            lock.acquire()
        except WorkdirLocked as e:
            error, lock = e, None
    if jax.process_count() > 1:
        locked = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if locked and error is None:
            error = WorkdirLocked(f"process 0 found workdir {workdir!r} in use by another "
                                  "trainer")
    if error:
        raise error
    return lock


def _loop(s: Setup, steps: Steps, checkpoints: Checkpoints, initial, stop: threading.Event,
          lock: WorkdirLock | None) -> dict[str, float]:
    """Trains from `initial` (state, data position) to cfg.steps, keeping
    `lock` fresh; closes `checkpoints`."""
    cfg, workdir = s.cfg, s.workdir
    train_step, eval_step = steps.train_step, steps.eval_step
    state, data_state = initial
    start = int(state["step"])
    pipeline = Pipeline(cfg.data, s.vocab, s.objective, "train", cfg.batch_size // s.num_shards,
                        s.shards, s.num_shards, state=data_state)
    prefetch = Prefetch(pipeline)
    writer = MetricWriter(workdir)
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=jax.process_index() != 0,
               dynamic_ncols=True)
    tokens_per_step = cfg.batch_size * (cfg.data.inputs_length + cfg.data.targets_length)
    # Step time and tokens/s count the train steps only: the first window
    # starts after this process's first step (compilation), and the time of
    # evaluations, traces and checkpoint saves is taken out of the window.
    last, held_out, window_start, window_steps = {}, None, time.perf_counter(), 0
    began, done, timed_s, timed_steps = time.perf_counter(), start, 0.0, 0
    say = bar.write if jax.process_index() == 0 else lambda _: None
    every_trace = cfg.trace_routing_every_steps
    tracer = None
    if every_trace:
        tracer = RoutingTracer(s, lambda: eval_batches(s)[0])
        if start == 0:
            tracer(0, model_variables(state))
    try:
        for step in range(start, cfg.steps):
            batch, data_state = prefetch.next()
            state, metrics = train_step(state, global_batch(s, batch))
            # Fetching the loss waits for the step.
            loss, finite = jax.device_get((metrics["loss"], metrics["finite"]))
            window_steps += 1
            if not finite:
                checkpoints.wait()
                last = checkpoints.latest_step()
                where = (f"The last good checkpoint is step {last} in {workdir}/checkpoints"
                         if last is not None else "No checkpoint was saved before it")
                raise NonFiniteLoss(f"non-finite loss ({loss}) or params at step {step + 1}; "
                                    f"stopped without saving. {where}")
            done = step + 1
            if step == start:
                window_start, window_steps = time.perf_counter(), 0
            if done % cfg.log_every_steps == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                last = flatten(jax.device_get(metrics))
                postfix = {"loss": f"{loss:.3f}"}
                if window_steps:
                    last.update(step_time_s=elapsed / window_steps,
                                tokens_per_s=tokens_per_step * window_steps / elapsed)
                    timed_s, timed_steps = timed_s + elapsed, timed_steps + window_steps
                    postfix["tok_s"] = f"{last['tokens_per_s']:,.0f}"
                writer.write(done, last)
                bar.set_postfix(**postfix)
                window_start, window_steps = time.perf_counter(), 0
            aside = time.perf_counter()
            eval_metrics = None
            if cfg.eval_every_steps and (done % cfg.eval_every_steps == 0 or done == cfg.steps):
                held_out = held_out or eval_batches(s)
                eval_metrics = flatten(evaluate(eval_step, model_variables(state), held_out),
                                       "eval_")
                if cfg.data.source == "task":
                    eval_metrics.update(flatten(task_scores(s, model_variables(state), done),
                                                "eval_"))
                writer.write(done, eval_metrics)
                last.update(eval_metrics)
                say(console.eval_line(done, eval_metrics))
            if tracer and (done % every_trace == 0 or done == cfg.steps):
                tracer(done, model_variables(state))
            bar.update(1)
            if lock:
                lock.refresh()
            every = cfg.checkpoint.every_steps
            if (every and done % every == 0) or done == cfg.steps or stop.is_set():
                checkpoints.save(done, state, data_state,
                                 {BEST_METRIC: eval_metrics["eval_loss"]} if eval_metrics else None)
            else:
                checkpoints.check()  # a background save that failed stops the run now
            window_start += time.perf_counter() - aside
            if stop.is_set():
                log.warning("SIGTERM: saved step %d, exiting", done)
                break
        checkpoints.wait()  # the run ends when its last checkpoint is complete
        bar.close()
        say(console.summary(workdir, start, done, cfg.steps, time.perf_counter() - began,
                            tokens_per_step * timed_steps / timed_s if timed_s else None, last,
                            checkpoints.latest_step(), stopped=stop.is_set()))
    finally:
        bar.close()
        checkpoints.close()
        writer.close()
    return last
