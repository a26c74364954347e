"""Scanned layers (model.scan_layers): the scanned model is the unscanned
one in another param layout. Reference: the unscanned model, given the same
params through moejax.models.scan's conversion."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_util import init, tiny_config, tokens
from train_config import small

from moejax.models import MoeConfig, Transformer, abstract_params, moe_outputs
from moejax.models.decoding import generate
from moejax.models.scan import is_scanned, match_layout, scan_tree, unscan_tree

# 4+4 layers: MoE in layers 1 and 3 of each stack (blocks of 2); dense: blocks of 1.
MOE = tiny_config(num_encoder_layers=4, num_decoder_layers=4)
DENSE = dataclasses.replace(MOE, encoder_moe=MoeConfig(), decoder_moe=MoeConfig())


def scanned(cfg, **kw):
    return dataclasses.replace(cfg, scan_layers=True, **kw)


def test_layouts_convert_both_ways():
    _, params = init(MOE)
    want = abstract_params(scanned(MOE))
    got = scan_tree(params, {"encoder": 2, "decoder": 2})
    assert is_scanned(got) and not is_scanned(params)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert [a.shape for a in jax.tree.leaves(got)] == [a.shape for a in jax.tree.leaves(want)]
    # layer 3 is block 1's second layer
    np.testing.assert_array_equal(got["decoder"]["blocks"]["layers_1"]["mlp"]["wo"][1],
                                  params["decoder"]["layers_3"]["mlp"]["wo"])
    for a, b in zip(jax.tree.leaves(unscan_tree(got)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert match_layout(params, want) is not params and match_layout(params, params) is params
    # abstract trees convert too (the trainer checks shapes before reading)
    flat = match_layout(want, abstract_params(MOE))
    assert jax.tree.structure(flat) == jax.tree.structure(params)


@pytest.mark.parametrize("cfg", [MOE, DENSE], ids=["moe_blocks_of_2", "dense_blocks_of_1"])
def test_scanned_model_equals_the_unscanned_one(cfg):
    """Logits, MoE metrics and aux loss, gradients (with each remat policy,
    per block), and greedy and beam decoding, with the same params."""
    model, params = init(cfg)
    smodel = Transformer(scanned(cfg))
    sparams = match_layout(params, abstract_params(scanned(cfg)))
    enc, dec = tokens(0, (2, 12), cfg.vocab_size, pad_from=[12, 9]), tokens(1, (2, 6),
                                                                          cfg.vocab_size)

    def loss(m, p, c):
        logits, state = m.apply({"params": p}, enc, dec, dec, mutable=["moe"])
        aux, metrics = moe_outputs(state.get("moe"), c)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux, (logits, aux, metrics)

    (want, (logits, aux, metrics)), grads = jax.jit(
        jax.value_and_grad(lambda p: loss(model, p, cfg), has_aux=True))(params)
    for remat in ("none", "full", "dots_saveable") if cfg is MOE else ("none",):
        c = scanned(cfg, remat=remat)
        (got, (slogits, saux, smetrics)), sgrads = jax.jit(jax.value_and_grad(
            lambda p, c=c: loss(Transformer(c), p, c), has_aux=True))(sparams)
        np.testing.assert_allclose(slogits, logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(saux, aux, rtol=1e-6, atol=1e-7)
        assert sorted(smetrics) == sorted(metrics)
        for k in metrics:
            np.testing.assert_allclose(smetrics[k], metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
        for a, b in zip(jax.tree.leaves(unscan_tree(sgrads)), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if cfg is MOE:
        assert {"encoder/layers_3/expert_load", "decoder/layers_1/expert_load"} <= set(metrics)
    for method in ("greedy", "beam"):
        a = generate(model, params, enc, max_length=5, method=method, num_beams=3)
        b = generate(smodel, sparams, enc, max_length=5, method=method, num_beams=3)
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_the_scanned_program_does_not_grow_with_depth():
    """What makes compile time flat: the traced train loss of a scanned
    model has as many equations at 8 layers per stack as at 2; unscanned,
    it grows with the layers."""
    def size(cfg):
        model = Transformer(cfg)
        params = abstract_params(cfg)
        enc = jnp.ones((2, 8), jnp.int32)
        grad = jax.grad(lambda p: jnp.mean(model.apply({"params": p}, enc, enc, enc)))
        return len(jax.make_jaxpr(grad)(params).jaxpr.eqns)

    depth = lambda cfg, n: dataclasses.replace(cfg, num_encoder_layers=n, num_decoder_layers=n)
    assert size(scanned(depth(MOE, 8))) == size(scanned(depth(MOE, 2)))
    assert size(depth(MOE, 8)) > 2 * size(depth(MOE, 2))


def test_scan_layers_needs_whole_blocks():
    with pytest.raises(ValueError, match=r"scan_layers scans blocks of encoder_moe.interval=2 "
                                         r"layers, which must divide num_encoder_layers=3"):
        dataclasses.replace(MOE, num_encoder_layers=3, scan_layers=True)


def test_training_a_scanned_model_from_an_unscanned_checkpoint_and_back(tmp_path):
    """Fine-tuning the same init checkpoint (unscanned) in either layout
    gives the same losses step by step (the init checkpoint converts), and
    the scanned run's checkpoint loads into an unscanned model."""
    from moejax.data import corpus, tokenizer
    from moejax.train.checkpoint import Checkpoints
    from moejax.train.init import load_params
    from moejax.train.metrics import read_metrics
    from moejax.train.trainer import train

    pretrain = tmp_path / "pretrain"
    base = small(steps=3, eval_every_steps=3, init_checkpoint=str(pretrain))
    tokenizer.train(corpus.documents(0, 500), 300, 100, str(pretrain / "tokenizer" / "spm.model"))
    _, params = init(base.model)
    checkpoints = Checkpoints(str(pretrain / "checkpoints"), base.checkpoint)
    checkpoints.save(0, {"params": params}, [])
    checkpoints.wait()
    checkpoints.close()
    runs = {}
    for scan in (False, True):
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, scan_layers=scan))
        train(cfg, str(tmp_path / f"scan_{scan}"))
        runs[scan] = read_metrics(str(tmp_path / f"scan_{scan}"))
    for step in (1, 2, 3):
        for key in ("loss", "cross_entropy", "aux_loss", "encoder/layers_1/expert_load"):
            np.testing.assert_allclose(runs[True][0][step][key], runs[False][0][step][key],
                                       rtol=2e-4, atol=1e-6, err_msg=f"{key} at step {step}")
    assert runs[True][1][3]["eval_loss"] == pytest.approx(runs[False][1][3]["eval_loss"],
                                                          rel=2e-4)

    scanned_cfg = dataclasses.replace(base.model, scan_layers=True)
    tuned = load_params(str(tmp_path / "scan_True"), abstract_params(scanned_cfg))
    flat = load_params(str(tmp_path / "scan_True"), abstract_params(base.model))
    assert not is_scanned(flat)
    for a, b in zip(jax.tree.leaves(unscan_tree(tuned)), jax.tree.leaves(flat)):
        np.testing.assert_array_equal(a, b)
