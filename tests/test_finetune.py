"""Fine-tuning: end to end on mock SST-2, params from a checkpoint (and
the errors when they do not fit), frozen router/experts, expert dropout."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from train_config import small

from moejax.data import corpus, tokenizer
from moejax.layers import MoeLayer
from moejax.models import abstract_params
from moejax.routing import RouterConfig
from moejax.train import optim, trainer
from moejax.train.checkpoint import CheckpointError, Checkpoints
from moejax.train.config import DataConfig, OptimizerConfig, TokenizerConfig
from moejax.train.init import load_params, tokenizer_of
from moejax.train.trainer import compile_steps, evaluate_only, setup, train


def sst2_config(**overrides):
    return small(data=DataConfig(source="task", task="glue_sst2", objective="text_to_text",
                                 inputs_length=32, targets_length=8),
                 tokenizer=TokenizerConfig(vocab_size=120, train_documents=200),
                 optimizer=OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="constant",
                                           warmup_steps=0),
                 steps=4, batch_size=8, eval_every_steps=4, eval_batches=1, eval_examples=16,
                 **overrides)


def test_finetune_on_mock_sst2_writes_scores_and_leaderboard_files(tmp_path, mock_tfds):
    workdir = str(tmp_path)
    with mock_tfds(40):
        last = train(sst2_config(), workdir)
        out = os.path.join(workdir, "eval", "validation_step_4")
        scores = json.load(open(os.path.join(out, "scores.json")))
        accuracy = scores["scores"]["glue_sst2"]["accuracy"]
        assert 0.0 <= accuracy <= 100.0 and scores["glue_average"] == accuracy
        assert last["eval_glue_sst2/accuracy"] == pytest.approx(accuracy)
        assert "| glue_sst2 |" in open(os.path.join(out, "scores.md")).read()
        rows = open(os.path.join(out, "glue", "SST-2.tsv")).read().splitlines()
        assert rows[0] == "index\tprediction" and len(rows) == 17
        assert {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"}
        # --eval_only on the test split: leaderboard files, no scores.
        test = evaluate_only(dataclasses.replace(
            sst2_config(), data=dataclasses.replace(sst2_config().data, eval_split="test")),
            workdir)
        assert test == {}
        assert os.path.exists(os.path.join(workdir, "eval", "test_step_4", "glue", "SST-2.tsv"))
        # AX-g has no training split, only a labelled test split, which is scored.
        axg = evaluate_only(dataclasses.replace(sst2_config(), data=dataclasses.replace(
            sst2_config().data, task="super_glue_axg", eval_split="test")), workdir)
        assert sorted(axg) == ["super_glue_axg/accuracy", "super_glue_axg/gender_parity",
                               "super_glue_axg/score"]
        assert 0.0 <= axg["super_glue_axg/accuracy"] <= 100.0


def test_init_checkpoint_loads_params_without_random_init_and_names_mismatches(tmp_path):
    cfg = small()
    pretrain = str(tmp_path / "pretrain")
    s = setup(cfg, pretrain)
    steps = compile_steps(s)
    with s.layout.context():
        state = steps.init(jax.random.key(1))
    checkpoints = Checkpoints(os.path.join(pretrain, "checkpoints"), cfg.checkpoint)
    checkpoints.save(0, state, [])
    checkpoints.wait()
    checkpoints.close()
    assert tokenizer_of(pretrain) == os.path.join(pretrain, "tokenizer", "spm.model")
    params = load_params(pretrain, abstract_params(cfg.model))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    other = dataclasses.replace(cfg.model, d_ff=96, num_decoder_layers=3)
    with pytest.raises(CheckpointError) as err:
        load_params(os.path.join(pretrain, "checkpoints", "0"), abstract_params(other))
    message = str(err.value)
    assert "encoder/layers_0/mlp/wi_0: checkpoint (64, 128) vs model (64, 96)" in message
    assert "missing from the checkpoint: decoder/layers_2/" in message
    with pytest.raises(FileNotFoundError, match="neither a moejax workdir"):
        load_params(str(tmp_path), abstract_params(cfg.model))

    # Without a tokenizer beside the checkpoint (pretrained with tokenizer.path),
    # fine-tuning refuses to train a new one, whose ids would not match the
    # embeddings, unless tokenizer.path names one.
    spm = os.path.join(pretrain, "tokenizer", "spm.model")
    os.rename(spm, str(tmp_path / "spm.model"))
    orphan = dataclasses.replace(cfg, init_checkpoint=pretrain)
    with pytest.raises(ValueError, match=r"has no tokenizer .*; set tokenizer.path to the "):
        setup(orphan, str(tmp_path / "orphan"))
    named = dataclasses.replace(orphan, tokenizer=dataclasses.replace(
        orphan.tokenizer, path=str(tmp_path / "spm.model")))
    assert setup(named, str(tmp_path / "named")).vocab.size == s.vocab.size
    os.rename(str(tmp_path / "spm.model"), spm)

    # A run with init_checkpoint starts from those params and never draws random
    # ones (setup and the compiled steps do not depend on init_checkpoint).
    tuned = dataclasses.replace(cfg, init_checkpoint=pretrain)
    s = dataclasses.replace(s, cfg=tuned, workdir=str(tmp_path / "tune"))

    def random_init(rng):
        raise AssertionError("a fine-tuning run drew random params")

    checkpoints = trainer._checkpoints(tuned, s.workdir)
    with s.layout.context():
        start, position = trainer._initial_state(
            s, dataclasses.replace(steps, init=random_init), checkpoints)
    checkpoints.close()
    assert int(start["step"]) == 0 and position is None
    for a, b in zip(jax.tree.leaves(start["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    labels = optim.frozen_labels(abstract_params(tuned.model, boxed=True), tuned.freeze_router,
                                 tuned.freeze_experts)
    fresh = optim.optimizer(tuned.optimizer, tuned.steps, labels).init(state["params"])
    for a, b in zip(jax.tree.leaves(start["opt_state"]), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)
    # placed as the train step expects, so the first step does not reshard
    for leaf, abstract in zip(jax.tree.leaves(start), jax.tree.leaves(steps.abstract_state)):
        assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)

    # A damaged init checkpoint, through the command line: one line naming
    # it and the cause (no TensorStore spec, no thread tracebacks), and the
    # new workdir is not left behind.
    damaged = tmp_path / "damaged"
    shutil.copytree(pretrain, damaged)
    for f in (damaged / "checkpoints" / "0" / "state" / "ocdbt.process_0" / "d").iterdir():
        f.write_bytes(b"garbage")  # the arrays' data
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "moejax.finetune", f"--config={root}/tests/train_config.py",
         f"--init_checkpoint={damaged}", f"--workdir={tmp_path / 'tuned'}"], cwd=root,
        env=dict(os.environ, PYTHONPATH=os.path.join(root, "tests")), capture_output=True,
        text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: init_checkpoint {damaged}/checkpoints/0/state cannot be read "
                           "(ValueError: "), last
    assert last.endswith("; it was left as is") and "'driver'" not in out.stderr, last
    assert not (tmp_path / "tuned").exists()


@pytest.mark.parametrize("router,experts", [(True, False), (False, True), (True, True)])
def test_frozen_params_do_not_move(router, experts):
    params = abstract_params(small().model)
    params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    labels = optim.frozen_labels(abstract_params(small().model, boxed=True), router, experts)
    opt = optim.optimizer(OptimizerConfig(name="adamw", learning_rate=0.1, schedule="constant",
                                          warmup_steps=0), 10, labels)
    state, moved = opt.init(params), params
    for _ in range(2):  # the schedule's warmup gives step 0 a zero learning rate
        updates, state = opt.update(grads, state, moved)
        moved = optax.apply_updates(moved, updates)
    moved = traverse_util.flatten_dict(moved, sep="/")
    labels = {"router": 0, "expert": 0, "other": 0}
    for name, value in moved.items():
        last = name.rsplit("/", 1)[1]
        kind = ("router" if last.startswith("router_") else
                "expert" if value.ndim == 3 else "other")
        frozen = (kind == "router" and router) or (kind == "expert" and experts)
        assert bool(jnp.all(value == 1.0)) == frozen, name
        labels[kind] += 1
    assert labels["router"] == 2 and labels["expert"] == 6  # 2 MoE layers, 3 kernels each


def test_expert_dropout_only_in_training():
    x = jax.random.normal(jax.random.key(0), (2, 8, 16))
    layer = lambda rate: MoeLayer(RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None),
                                  d_ff=32, dropout_rate=rate)
    variables = layer(0.0).init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2), "router": jax.random.key(3)}
    plain = layer(0.0).apply(variables, x)
    np.testing.assert_array_equal(layer(0.5).apply(variables, x), plain)  # eval: no dropout
    train_plain = layer(0.0).apply(variables, x, deterministic=False, rngs=rngs)
    dropped = layer(0.5).apply(variables, x, deterministic=False, rngs=rngs)
    assert not np.allclose(dropped, train_plain)
    # Inverted dropout keeps the expectation: averaged over masks it is the plain output.
    sample = jax.jit(jax.vmap(lambda key: layer(0.5).apply(
        variables, x, deterministic=False, rngs={**rngs, "dropout": key})))
    mean = np.mean(sample(jax.random.split(jax.random.key(10), 300)), axis=0)
    np.testing.assert_allclose(mean, train_plain, atol=0.15 * float(np.abs(train_plain).max()))


def _upcycling_configs():
    """(dense model, MoE model of it): top-2 with weights renormalised to sum
    to 1 and no capacity limit in the second layer of each stack."""
    from moejax.models import MoeConfig

    dense = dataclasses.replace(small().model, encoder_moe=MoeConfig(interval=0),
                                decoder_moe=MoeConfig(interval=0))
    router = RouterConfig("top_k", num_experts=4, k=2, normalize_weights=True,
                          capacity_factor=None, eval_capacity_factor=None)
    moe = dataclasses.replace(dense, encoder_moe=MoeConfig(interval=2, router=router),
                              decoder_moe=MoeConfig(interval=2, router=router))
    return dense, moe


def _save_params(directory, params):
    checkpoints = Checkpoints(os.path.join(directory, "checkpoints"), small().checkpoint)
    checkpoints.save(0, {"params": params}, [])
    checkpoints.wait()
    checkpoints.close()


def test_upcycled_model_starts_with_the_dense_models_logits(tmp_path):
    """Sparse upcycling: every expert a copy of the dense FFN and combine
    weights that sum to 1 give the dense model's function exactly; routers
    are fresh; noise makes the experts differ; a dense FFN of another width
    is named in the error."""
    from model_util import init, tokens

    from moejax.models import Transformer
    from moejax.train.init import upcycled_params

    dense_cfg, moe_cfg = _upcycling_configs()
    dense_model, dense = init(dense_cfg)
    _save_params(str(tmp_path / "dense"), dense)
    params = upcycled_params(str(tmp_path / "dense"), moe_cfg, abstract_params(moe_cfg))
    mlp = params["encoder"]["layers_1"]["mlp"]
    for name in ("wi_0", "wi_1", "wo"):
        for e in range(4):
            np.testing.assert_array_equal(mlp[name][e], dense["encoder"]["layers_1"]["mlp"][name])
    assert mlp["router_kernel"].shape == (64, 4) and np.std(mlp["router_kernel"]) > 0
    enc, dec = tokens(0, (2, 12), 512), tokens(1, (2, 6), 512)
    want = dense_model.apply({"params": dense}, enc, dec)
    got = Transformer(moe_cfg).apply({"params": params}, enc, dec)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # A scanned MoE model is upcycled to the same params, in its layout.
    from moejax.models.scan import unscan_tree

    scanned_cfg = dataclasses.replace(moe_cfg, scan_layers=True)
    scanned = upcycled_params(str(tmp_path / "dense"), scanned_cfg, abstract_params(scanned_cfg))
    assert scanned["encoder"]["blocks"]["layers_1"]["mlp"]["wo"].shape == (1, 4, 128, 64)
    for a, b in zip(jax.tree.leaves(unscan_tree(scanned)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)

    noisy = upcycled_params(str(tmp_path / "dense"), moe_cfg, abstract_params(moe_cfg), 0.01)
    wo = noisy["decoder"]["layers_1"]["mlp"]["wo"]
    assert not np.allclose(wo[0], wo[1])
    ratio = wo / dense["decoder"]["layers_1"]["mlp"]["wo"]
    assert 0.005 < float(np.std(ratio)) < 0.02

    wide = dataclasses.replace(moe_cfg, encoder_moe=dataclasses.replace(moe_cfg.encoder_moe,
                                                                        d_ff=96))
    with pytest.raises(CheckpointError, match=r"encoder/layers_1/mlp/wi_0: checkpoint "
                       r"\(64, 128\) vs model \(64, 96\)"):
        upcycled_params(str(tmp_path / "dense"), wide, abstract_params(wide))


def test_upcycle_switch_trains_an_moe_from_a_dense_workdir(tmp_path):
    """moejax.train --upcycle: the run starts from the dense checkpoint's
    params and trains the MoE model."""
    from model_util import init

    dense_cfg, moe_cfg = _upcycling_configs()
    _, dense = init(dense_cfg)
    dense_dir = str(tmp_path / "dense")
    _save_params(dense_dir, dense)
    # A run's tokenizer lives beside its checkpoints; the upcycled run inherits it.
    cfg = small(model=moe_cfg, steps=2, eval_every_steps=0, init_checkpoint=dense_dir,
                upcycle=True)
    tokenizer.train(corpus.documents(0, 500), cfg.tokenizer.vocab_size, cfg.tokenizer.extra_ids,
                    os.path.join(dense_dir, "tokenizer", "spm.model"))
    last = train(cfg, str(tmp_path / "moe"))
    assert np.isfinite(last["loss"])
    with pytest.raises(ValueError, match="upcycle=True needs init_checkpoint"):
        small(upcycle=True)
    # Experts that do not match the dense FFN: one error, and the new
    # workdir is gone, so the corrected command starts afresh.
    wide = dataclasses.replace(moe_cfg, encoder_moe=dataclasses.replace(moe_cfg.encoder_moe,
                                                                        d_ff=96))
    with pytest.raises(CheckpointError, match=r"checkpoint \(64, 128\) vs model \(64, 96\)"):
        train(dataclasses.replace(cfg, model=wide), str(tmp_path / "wide"))
    assert not (tmp_path / "wide").exists()
