"""Fused attention (jax.nn.dot_product_attention) against the einsum attention, and
rematerialised layers against plain ones."""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_util import init, tiny_config, tokens

from moejax.layers.attention import AttentionBias, MultiHeadAttention, resolve_attention, stack_bias
from moejax.models import T5Config, abstract_params
from moejax.models.decoding import generate


def logits_and_grads(model, params, enc, dec, **kw):
    """Logits everywhere, and gradients of a loss over the real target
    positions (what training differentiates: padded queries attend to
    nothing, and their rows differ by implementation only in float noise
    that autodiff sees through)."""
    def loss(p):
        logits = model.apply({"params": p}, enc, dec, **kw)
        return jnp.sum(jnp.sin(logits) * (dec > 0)[..., None]), logits
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def packed():
    seg = lambda a, b: jnp.asarray([[1] * a + [2] * b, [1] * (a + b)])
    pos = lambda a, b: jnp.asarray([list(range(a)) + list(range(b)), list(range(a + b))])
    enc, dec = tokens(0, (2, 9), 40, pad_from=[9, 7]), tokens(1, (2, 7), 40, pad_from=[7, 5])
    return enc, dec, dict(encoder_segment_ids=seg(5, 4), decoder_segment_ids=seg(4, 3),
                          encoder_positions=pos(5, 4), decoder_positions=pos(4, 3))


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_xla_attention_equals_einsum_in_outputs_and_gradients(case):
    if case == "padded":
        enc, dec, kw = tokens(0, (2, 8), 40, pad_from=[8, 5]), tokens(1, (2, 6), 40, [4, 6]), {}
    else:
        enc, dec, kw = packed()
    cfg = tiny_config(encoder_router="top_k", attention="einsum")
    model, params = init(cfg)
    want, want_grads = logits_and_grads(model, params, enc, dec, **kw)
    fused = model.clone(config=dataclasses.replace(cfg, attention="xla"))
    got, grads = logits_and_grads(fused, params, enc, dec, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cached_decoding_is_the_same_under_xla_attention():
    cfg = tiny_config(attention="einsum")
    model, params = init(cfg)
    enc = tokens(0, (3, 7), 40, pad_from=[7, 4, 6])
    want = generate(model, params, enc, max_length=6).tokens
    fused = model.clone(config=dataclasses.replace(cfg, attention="xla"))
    np.testing.assert_array_equal(generate(fused, params, enc, max_length=6).tokens, want)


def test_cudnn_falls_back_to_einsum_where_it_cannot_run(caplog):
    """Traced where cuDNN is missing (this CPU), the layer runs the einsum
    attention and says so once."""
    b, l, d, h = 2, 5, 16, 4
    x = jax.random.normal(jax.random.PRNGKey(0), (b, l, d))
    mask = jnp.ones((b, 1, l, l), bool).at[1, :, :, 3:].set(False)
    position = jax.random.normal(jax.random.PRNGKey(1), (1, h, l, l))
    layer = MultiHeadAttention(h, d // h, implementation="einsum")
    params = layer.init(jax.random.PRNGKey(2), x, x, stack_bias(position, mask, "einsum"))
    want = layer.apply(params, x, x, stack_bias(position, mask, "einsum"))
    with caplog.at_level(logging.WARNING, logger="moejax.layers.attention"):
        got = layer.clone(implementation="cudnn").apply(params, x, x,
                                                         AttentionBias(position, mask))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert "running the einsum attention" in caplog.text


def test_auto_is_cudnn_only_where_it_fits():
    fits = dict(dtype=jnp.bfloat16, head_dim=64, dropout_rate=0.0)
    assert resolve_attention("auto", backend="gpu", **fits) == "cudnn"
    assert resolve_attention("auto", backend="cpu", **fits) == "einsum"
    assert resolve_attention("auto", backend="tpu", **fits) == "einsum"
    for change in (dict(dtype=jnp.float32), dict(head_dim=256), dict(head_dim=12),
                   dict(dropout_rate=0.1)):
        assert resolve_attention("auto", backend="gpu", **{**fits, **change}) == "einsum"
    assert resolve_attention("xla", backend="cpu", **fits) == "xla"
    with pytest.raises(ValueError, match=r"^attention 'cudnn' needs an NVIDIA GPU; this is cpu"):
        resolve_attention("cudnn", backend="cpu", **fits)


def test_config_rejects_unknown_and_dropout_with_fused():
    with pytest.raises(ValueError, match=r"attention must be one of \('auto', 'einsum', 'xla', "):
        T5Config(attention="flash")
    with pytest.raises(ValueError, match="attention 'xla' has no dropout on the attention weights"):
        T5Config(attention="xla", dropout_rate=0.1)
    assert T5Config(dropout_rate=0.1).attention == "auto"  # auto takes einsum there


def test_remat_keeps_params_outputs_and_gradients():
    """Rematerialised layers: the same param tree, logits, sown routing
    metrics and gradients (with dropout and router noise on: their rngs
    replay in the recomputation)."""
    cfg = tiny_config(encoder_router="top_k", dropout_rate=0.1)
    model, params = init(cfg)
    enc, dec = tokens(0, (2, 8), 40, pad_from=[8, 5]), tokens(1, (2, 6), 40, [4, 6])

    def go(remat):
        m = model.clone(config=dataclasses.replace(cfg, remat=remat))

        def loss(p):
            logits, state = m.apply({"params": p}, enc, dec, enable_dropout=True,
                                    rngs={"dropout": jax.random.PRNGKey(0),
                                          "router": jax.random.PRNGKey(1)}, mutable=["moe"])
            return jnp.sum(jnp.sin(logits)), (logits, state)
        (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return aux, grads

    (want, want_moe), want_grads = go("none")
    shapes = lambda c: jax.tree.map(lambda x: (x.shape, x.dtype), abstract_params(c))
    for remat in ("full", "dots_saveable"):
        (got, moe), grads = go(remat)
        np.testing.assert_array_equal(got, want, err_msg=remat)
        assert jax.tree.structure(moe) == jax.tree.structure(want_moe)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=remat)
        assert shapes(dataclasses.replace(cfg, remat=remat)) == shapes(cfg)
    with pytest.raises(ValueError, match=r"remat must be one of \('none', 'full', "):
        T5Config(remat="all")
