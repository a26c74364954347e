"""The trainer: loss falls, metrics, exact resume after kill -9, SIGTERM,
non-finite losses, bad inputs, gradient accumulation, mesh changes."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from script_util import FAST_COMPILE
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_config import small

from moejax.data import corpus, tokenizer
from moejax.models import MoeConfig
from moejax.train.checkpoint import CheckpointError, Checkpoints
from moejax.train.config import OptimizerConfig, TokenizerConfig
from moejax.train.metrics import read_metrics
from moejax.train.trainer import NonFiniteLoss, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "train_config.py")


def launch(workdir, *overrides, devices=1):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                                     f"{FAST_COMPILE}",
               PYTHONPATH=os.path.join(ROOT, "tests"))
    return subprocess.Popen([sys.executable, "-m", "moejax.train", f"--config={CONFIG}",
                             f"--workdir={workdir}", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_params(workdir):
    manager = Checkpoints(os.path.join(workdir, "checkpoints"),
                          small().checkpoint)
    step = manager.latest_step()
    restored = manager.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    manager.close()
    state = restored["state"]
    return step, jax.tree.leaves({k: state[k] for k in ("params", "router_state") if k in state})


def test_loss_falls_and_metrics_are_logged(tmp_path, capsys):
    workdir = str(tmp_path)
    last = train(small(), workdir)
    rows, evals = read_metrics(workdir)
    # The console: one line per evaluation, then where everything went.
    printed = capsys.readouterr().out.splitlines()
    for step in (10, 20, 30):
        line = f"step {step}: eval loss {evals[step]['eval_loss']:.4f}"
        assert any(p.startswith(line) and f"accuracy {evals[step]['eval_accuracy']:.4f}" in p
                   for p in printed), (line, printed)
    summary = [p for p in printed if p.startswith("trained to step 30: 30 steps in ")]
    assert len(summary) == 1 and summary[0].endswith(" tokens/s in the train steps"), printed
    assert f"last train loss {rows[30]['loss']:.4f}, eval loss {evals[30]['eval_loss']:.4f}" in \
        "\n".join(printed)
    assert f"checkpoints  {workdir}/checkpoints (latest: step 30)" in printed
    assert f"plots        python scripts/plot_metrics.py {workdir}" in printed
    assert sorted(rows) == list(range(1, 31)) and sorted(evals) == [10, 20, 30]
    assert rows[30]["loss"] < rows[1]["loss"] - 1.0
    assert evals[30]["eval_loss"] < evals[10]["eval_loss"]
    assert np.isfinite(evals[30]["eval_dropless_loss"])
    for key in ("loss", "cross_entropy", "accuracy", "learning_rate", "aux_loss", "z_loss",
                "moe/dropped_fraction", "moe/experts_per_token", "step_time_s", "tokens_per_s"):
        assert np.isfinite(rows[30][key]), key
    # Step 1 compiles: not timed; every later step is.
    assert "step_time_s" not in rows[1] and all(rows[s]["step_time_s"] > 0 for s in range(2, 31))
    load = rows[30]["encoder/layers_1/expert_load"]
    assert len(load) == 8 and abs(sum(load) - 1) < 1e-5
    assert last["eval_loss"] == evals[30]["eval_loss"]
    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx({s: rows[s]["loss"] for s in rows}, rel=1e-6)
    assert len(events.Scalars("encoder/layers_1/expert_load/7")) == 30
    assert json.load(open(os.path.join(workdir, "config.json")))["steps"] == 30
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "30"]
    assert 0 <= rows[30]["encoder/layers_1/dead_experts"] <= 1
    assert rows[30]["encoder/layers_1/max_violation"] > -1e-6  # expert choice: balanced
    plots = subprocess.run([sys.executable, "scripts/plot_metrics.py", workdir], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert plots.returncode == 0, plots.stderr[-2000:]
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == [
        "balance.png", "expert_load.png", "load_heatmap.png", "loss.png", "routing.png",
        "throughput.png"]


# Router state in both stacks: the aux-loss-free bias in the decoder,
# quantile balancing (EMA 0.5, so the old bias matters) in the encoder.
STATE = ("--config.model.decoder_moe.router.score_fn=sigmoid",
         "--config.model.decoder_moe.router.bias_update_rate=0.01",
         "--config.model.encoder_moe.router.name=top_k",
         "--config.model.encoder_moe.router.score_fn=sigmoid",
         "--config.model.encoder_moe.router.quantile_balancing=True",
         "--config.model.encoder_moe.router.quantile_balancing_ema=0.5")


@pytest.mark.parametrize("extra", [(), STATE], ids=["plain", "router_state"])
def test_resume_after_kill_9_is_exact(tmp_path, extra):
    """Params (and router state: the selection biases of the sign update
    and of quantile balancing, checkpointed beside them) after a kill -9
    and resume equal those of an uninterrupted run, bit for bit."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    args = ("--config.steps=20", "--config.eval_every_steps=0", *extra)
    reference = launch(straight, *args)  # runs alongside the run that gets killed
    proc = launch(killed, *args)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(killed, "checkpoints", "10", "_CHECKPOINT_METADATA")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The dead trainer's lock is left behind; the rerun takes it over.
    assert json.loads(open(os.path.join(killed, "lock.json")).read())["pid"] == proc.pid
    assert launch(killed, *args).wait(timeout=300) == 0
    assert not os.path.exists(os.path.join(killed, "lock.json"))
    assert reference.wait(timeout=300) == 0
    a, b = read_metrics(straight)[0], read_metrics(killed)[0]
    assert [a[s]["loss"] for s in range(1, 21)] == [b[s]["loss"] for s in range(1, 21)]
    step_a, params_a = final_params(straight)
    step_b, params_b = final_params(killed)
    assert step_a == step_b == 20 and len(params_a) == len(params_b)
    for x, y in zip(params_a, params_b):
        np.testing.assert_array_equal(x, y)


def test_selection_bias_and_a_fixed_router_through_the_trainer(tmp_path):
    """bias_update_rate through the trainer (with 2 micro-batches per step):
    the bias is in the state's 'router_state', outside params and the
    optimizer state, it moves during training, and evaluation runs with it.
    And router 'frozen' in the encoder: its kernel (a param the optimizer
    leaves, by its axis) stays put while that layer's experts train."""
    from moejax.routing import RouterConfig

    router = RouterConfig("top_k", num_experts=8, k=2, score_fn="sigmoid",
                          bias_update_rate=0.01)
    cfg = small(steps=10, eval_every_steps=10, grad_accum_steps=2,
                checkpoint=dataclasses.replace(small().checkpoint, every_steps=5))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, decoder_moe=MoeConfig(interval=2, router=router),
        encoder_moe=MoeConfig(interval=2, router=RouterConfig("frozen", num_experts=8))))
    last = train(cfg, str(tmp_path))
    assert np.isfinite(last["eval_loss"])
    manager = Checkpoints(os.path.join(str(tmp_path), "checkpoints"), cfg.checkpoint)
    restore = lambda step: manager.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))["state"]
    state, before = restore(10), restore(5)
    manager.close()
    bias = state["router_state"]["decoder"]["layers_1"]["mlp"]["selection_bias"]
    assert bias.shape == (8,) and np.any(bias != 0)
    # Each micro-batch moves every expert's bias by +-0.01 (0 at exactly the mean load).
    assert np.all(np.abs(bias) <= 10 * 2 * 0.01 + 1e-6)
    leaves = lambda tree: [jax.tree_util.keystr(k) for k, _ in
                           jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert not any("selection_bias" in k for k in leaves(state["params"]))
    assert not any("selection_bias" in k for k in leaves(state["opt_state"]))
    fixed, moving = (p["encoder"]["layers_1"]["mlp"] for p in (state["params"], before["params"]))
    np.testing.assert_array_equal(fixed["router_kernel"], moving["router_kernel"])
    assert not np.allclose(fixed["wo"], moving["wo"])
    decoder = [p["decoder"]["layers_1"]["mlp"]["router_kernel"]
               for p in (state["params"], before["params"])]
    assert not np.allclose(*decoder)


def test_sigterm_saves_and_exits_zero(tmp_path):
    workdir = str(tmp_path)
    proc = launch(workdir, "--config.steps=100000", "--config.eval_every_steps=0",
                  "--config.checkpoint.every_steps=0")
    deadline = time.time() + 300
    metrics = os.path.join(workdir, "metrics.jsonl")
    while not (os.path.exists(metrics) and os.path.getsize(metrics)):  # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    step, _ = final_params(workdir)
    assert 1 <= step < 100000
    assert max(read_metrics(workdir)[0]) <= step


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # The lr ramps from 0, so the first update is harmless and the next one
    # blows the params up.
    cfg = small(optimizer=OptimizerConfig(name="adamw", learning_rate=1e38, schedule="constant",
                                          warmup_steps=4),
                checkpoint=dataclasses.replace(small().checkpoint, every_steps=1, async_save=False))
    with pytest.raises(NonFiniteLoss, match=r"at step (\d+); .*last good checkpoint is step"):
        train(cfg, str(tmp_path))
    step, params = final_params(str(tmp_path))
    assert step >= 1 and all(np.isfinite(p).all() for p in params)
    # Without a checkpoint before the blow-up, the message says so (it
    # used to read "the last good checkpoint is step None").
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=0))
    with pytest.raises(NonFiniteLoss, match=r"stopped without saving\. No checkpoint was saved "
                                            r"before it$"):
        train(cfg, str(tmp_path / "none"))


def test_a_source_without_any_example_fails_before_training(tmp_path):
    """Every document one token long: the stream used to loop over epochs
    for ever. Now setup's first batch fails at once, and the fresh workdir
    is gone."""
    tokenizer.train(corpus.documents(0, 500), 300, 100, str(tmp_path / "spm.model"))
    words = tmp_path / "words.txt"
    words.write_text("the\n" * 200)
    cfg = small(tokenizer=TokenizerConfig(path=str(tmp_path / "spm.model")),
                data=dataclasses.replace(small().data, source="text", train_files=str(words)),
                eval_every_steps=0)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^data.source='text' \(train split\) gave no "
                                         r"span_corruption example in a whole epoch"):
        train(cfg, str(tmp_path / "run"))
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run").exists()


def test_a_full_disk_mid_run_stops_with_one_line(tmp_path):
    """Files capped at 390 KiB (ulimit -f, as a full disk: writes fail
    with EFBIG): the tokenizer fits, the first checkpoint does not. The
    background write fails; the run stops with one line naming the step and
    the cause, once, without orbax's thread tracebacks or TensorStore specs."""
    workdir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
               PYTHONPATH=os.path.join(ROOT, "tests"))
    # The shell sets the limit (a preexec_fn would fork this multithreaded process).
    command = (f"ulimit -f 390 && exec {sys.executable} -m moejax.train --config={CONFIG} "
               f"--workdir={workdir} --config.steps=8 --config.eval_every_steps=0 "
               f"--config.checkpoint.every_steps=2")
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint step 2 cannot be written to {workdir}/checkpoints "
                           "(ValueError: OUT_OF_RANGE: Error writing"), last
    assert last.endswith("File too large); stopped, no complete checkpoint was written"), last
    assert out.stderr.count("OUT_OF_RANGE") == 1 and "'driver'" not in out.stderr
    # It stopped at the next save at the latest, not at the end of the run.
    assert max(read_metrics(str(workdir))[0]) <= 4


def test_bad_inputs_fail_before_compute(tmp_path):
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 8"):
        train(small(batch_size=12), str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="tokenizer.path '/no/spm.model' does not exist"):
        train(small(tokenizer=TokenizerConfig(path="/no/spm.model")), str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="data.train_files '/no/\\*.txt' matches no files"):
        train(small(data=dataclasses.replace(small().data, source="text", train_files="/no/*.txt")),
              str(tmp_path / "e"))
    with pytest.raises(ValueError, match="model.vocab_size=300"):
        train(small(model=dataclasses.replace(small().model, vocab_size=300)), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="needs 3 devices, but 8 are available"):
        train(small(mesh=dataclasses.replace(small().mesh, data=3)), str(tmp_path / "d"))
    for workdir in (tmp_path / "a", tmp_path / "c", tmp_path / "d"):
        assert not (workdir / "checkpoints").exists()


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    workdir, fresh = tmp_path / "corrupt", tmp_path / "fresh"
    train(small(steps=10, eval_every_steps=0), str(workdir))
    shutil.copytree(workdir, fresh)
    victim = workdir / "checkpoints" / "10" / "state"
    for f in victim.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "manifest" in f.name:
            f.write_bytes(b"garbage")
    before = sorted((str(p), p.stat().st_size) for p in (workdir / "checkpoints").rglob("*"))
    with pytest.raises(CheckpointError, match=r"checkpoints/10 cannot be restored") as err:
        train(small(steps=20, eval_every_steps=0), str(workdir))
    assert "\n" not in str(err.value) and "TensorStore" not in str(err.value)
    assert "cache_pool" not in str(err.value)  # no piece of the spec either
    after = sorted((str(p), p.stat().st_size) for p in (workdir / "checkpoints").rglob("*"))
    assert after == before
    other_model = dataclasses.replace(small().model, d_ff=96)
    with pytest.raises(CheckpointError, match="cannot be restored|does not match the configured"):
        train(small(steps=20, eval_every_steps=0, model=other_model), str(fresh))


def test_unretrieved_orbax_read_errors_are_not_logged(monkeypatch):
    # A failed restore leaves its other reads' asyncio tasks with errors
    # nobody retrieves; when they are collected (at a time the scheduler
    # picks) asyncio logs each with a traceback and the TensorStore spec.
    # They echo the one-line error, so they are dropped; a task of any
    # other code still logs.
    import asyncio
    import gc
    import logging
    import warnings

    from moejax.train.checkpoint import quiet_orbax_threads

    monkeypatch.delenv("MOEJAX_DEBUG", raising=False)
    quiet_orbax_threads()
    with warnings.catch_warnings():  # earlier tests' failed reads, never awaited
        warnings.simplefilter("ignore")
        gc.collect()
    scope = {}
    for name, where in (("orbax_read", "site-packages/orbax/checkpoint/_src/fake.py"),
                        ("user_task", "user_code.py")):
        exec(compile(f"async def {name}():\n    raise ValueError('OUT_OF_RANGE')\n", where,
                     "exec"), scope)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    try:
        for name in ("orbax_read", "user_task"):
            loop = asyncio.new_event_loop()
            task = loop.create_task(scope[name]())
            loop.run_until_complete(asyncio.sleep(0.01))
            assert task.done()
            loop.close()
            del task
            gc.collect()  # the task's traceback holds a cycle
    finally:
        asyncio_logger.removeHandler(handler)
    assert len(seen) == 1 and "user_task" in seen[0], seen


def test_describe_keeps_tensorstores_cause_and_drops_its_spec():
    # A damaged manifest: the cause is before a JSON spec long enough that
    # the old pattern (no [1] index) kept it, and the cut showed only JSON.
    from moejax.train.checkpoint import describe

    spec = "{" + ",".join(f'\\"k{i}\\":{{\\"chunks\\":[64,64]}}' for i in range(40)) + "}"
    cause = ValueError(
        'DATA_LOSS: Error reading "step/.zarray": Error decoding manifest: Encoded length (7) '
        f"is less than minimum length (16) [tensorstore_spec[1]='{spec}'] "
        "[source locations='tensorstore/kvstore/ocdbt/format/manifest.cc:178\ntensorstore/"
        "driver/zarr/driver.cc:30'] [os_error_code=2]")
    try:
        try:
            raise cause
        except ValueError as e:
            raise RuntimeError("Encountered error while reading array index. See full "
                               "TensorStore details: {...}") from e
    except RuntimeError as e:
        text = describe(e)
    assert text == ('ValueError: DATA_LOSS: Error reading "step/.zarray": Error decoding '
                    'manifest: Encoded length (7) is less than minimum length (16)'), text


def test_gradient_accumulation_equals_one_batch(tmp_path):
    dense = dataclasses.replace(small().model, encoder_moe=MoeConfig(interval=0),
                                decoder_moe=MoeConfig(interval=0))
    common = dict(model=dense, steps=3, eval_every_steps=0)
    one = train(small(**common), str(tmp_path / "one"))
    two = train(small(grad_accum_steps=2, **common), str(tmp_path / "two"))
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for x, y in zip(final_params(str(tmp_path / "one"))[1], final_params(str(tmp_path / "two"))[1]):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_resume_on_a_smaller_mesh(tmp_path):
    workdir = str(tmp_path)
    cfg = small(steps=10, eval_every_steps=0,
                mesh=dataclasses.replace(small().mesh, data=2, expert=4))
    train(cfg, workdir)
    # Continue on 4 devices (data 4): the checkpoint is resharded on restore.
    proc = launch(workdir, "--config.steps=12", "--config.eval_every_steps=0", devices=4)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    rows = read_metrics(workdir)[0]
    assert sorted(rows)[-2:] == [11, 12] and np.isfinite(rows[12]["loss"])


def test_two_processes_match_one(tmp_path):
    # 2 processes x 4 CPU devices (gloo collectives) vs 1 process x 8, with
    # the input split into the same 2 shards: same global batches, same losses.
    args = ("--config.steps=6", "--config.eval_every_steps=0", "--config.data.num_shards=2")
    single = str(tmp_path / "single")
    assert launch(single, *args, devices=8).wait(timeout=300) == 0
    multi = str(tmp_path / "multi")
    port = 20000 + os.getpid() % 20000
    procs = [launch(multi, *args, "--multihost", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}", devices=4) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = read_metrics(single)[0], read_metrics(multi)[0]
    assert sorted(a) == sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s]["loss"] for s in b], [a[s]["loss"] for s in a], rtol=2e-5)


def test_eval_reports_the_dropless_loss_beside_the_clipped_one():
    """eval_dropless_loss is the loss of the same params with no evaluation
    capacity limit: it equals a model built with eval_capacity_factor=None,
    differs from the clipped loss when capacity drops tokens, and is the
    loss itself where nothing is limited (expert choice keeps its capacity)."""
    from model_util import init, tiny_config, tokens

    from moejax.models import Transformer
    from moejax.routing import RouterConfig
    from moejax.train.step import make_eval_step

    def batch(seed):
        enc, dec = tokens(seed, (4, 12), 40), tokens(seed + 1, (4, 6), 40)
        ones = lambda t: np.ones(t.shape, np.int32)
        pos = lambda t: np.broadcast_to(np.arange(t.shape[1]), t.shape).astype(np.int32)
        return {"encoder_input_tokens": enc, "encoder_segment_ids": ones(enc),
                "encoder_positions": pos(enc), "decoder_input_tokens": dec,
                "decoder_target_tokens": dec, "decoder_segment_ids": ones(dec),
                "decoder_positions": pos(dec)}

    def with_decoder(cfg, router):
        return dataclasses.replace(cfg, decoder_moe=dataclasses.replace(cfg.decoder_moe,
                                                                        router=router))

    cfg = with_decoder(tiny_config(), RouterConfig("top_k", num_experts=4, k=2,
                                                   eval_capacity_factor=0.25))
    _, params = init(cfg)
    data = batch(0)
    clipped = jax.jit(make_eval_step(Transformer(cfg), 1e-4))({"params": params}, data)
    assert float(clipped["decoder/layers_1/dropped_fraction"]) > 0.1
    free = with_decoder(cfg, dataclasses.replace(cfg.decoder_moe.router, eval_capacity_factor=None))
    unclipped = jax.jit(make_eval_step(Transformer(free), 1e-4))({"params": params}, data)
    assert float(unclipped["decoder/layers_1/dropped_fraction"]) == 0.0
    np.testing.assert_allclose(clipped["dropless_loss"], unclipped["loss"], rtol=1e-6)
    assert abs(float(clipped["loss"]) - float(clipped["dropless_loss"])) > 1e-4
    assert float(unclipped["dropless_loss"]) == float(unclipped["loss"])
    assert free.dropless() == free and cfg.dropless() == free  # expert choice encoder kept


def test_the_eval_line_shows_task_scores_and_mixture_averages():
    from moejax.train.console import eval_line

    base = {"eval_loss": 1.23456, "eval_dropless_loss": 1.23456, "eval_accuracy": 0.5,
            "eval_encoder/layers_1/expert_load": [0.5, 0.5], "eval_moe/dropped_fraction": 0.0}
    assert eval_line(4, base) == "step 4: eval loss 1.2346, accuracy 0.5000"
    tuned = {**base, "eval_dropless_loss": 1.2, "eval_glue_sst2/accuracy": 89.25}
    assert eval_line(4, tuned) == ("step 4: eval loss 1.2346 (dropless 1.2000), accuracy 0.5000; "
                                   "glue_sst2/accuracy 89.25")
    mixture = {**base, **{f"eval_glue_t{i}/{m}": 50.0 + i for i in range(4)
                          for m in ("accuracy", "score")}, "eval_glue_average": 51.5}
    assert eval_line(4, mixture).endswith("; glue_average 51.50, glue_t0/score 50.00, "
                                          "glue_t1/score 51.00, glue_t2/score 52.00, "
                                          "glue_t3/score 53.00")


def test_relu_router_state_starts_at_its_init_through_the_trainer(tmp_path):
    """The relu router's L1 coefficient is router state that starts at
    relu_l1_init (not at 0, where the controller's factor could never move
    it) and is multiplied by relu_l1_growth^(+-1) every step."""
    from moejax.routing import RouterConfig

    router = RouterConfig("relu", num_experts=8, capacity_factor=None, relu_l1_init=1e-3)
    cfg = small(steps=6, eval_every_steps=0, log_every_steps=1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, decoder_moe=MoeConfig(interval=2, router=router)))
    train(cfg, str(tmp_path))
    rows, _ = read_metrics(str(tmp_path))
    coefficients = [rows[s]["decoder/layers_1/l1_coefficient"] for s in range(1, 7)]
    # Logged after routing with the step's coefficient: step 1's is the init.
    assert coefficients[0] == pytest.approx(1e-3, rel=1e-6)
    for a, b in zip(coefficients, coefficients[1:]):
        assert b / a == pytest.approx(1.2, rel=1e-5) or a / b == pytest.approx(1.2, rel=1e-5)
