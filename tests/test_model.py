"""The encoder-decoder: masks, packing, causality, MoE outputs, config errors."""
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_util import init, run, tiny_config, tokens

from moejax.models import MoeConfig, T5Config, Transformer, moe_outputs
from moejax.routing import RouterConfig
from moejax.structured import from_mapping


def test_shapes_and_param_layout():
    cfg = tiny_config(num_encoder_layers=4, tie_embeddings=True)
    enc, dec = tokens(0, (2, 7), 40), tokens(1, (2, 5), 40)
    model = Transformer(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), enc, dec))["params"]
    logits = run(model, params, enc, dec)
    assert logits.shape == (2, 5, 40) and logits.dtype == jnp.float32
    enc_layers = params["encoder"]
    assert [("router_kernel" in enc_layers[f"layers_{i}"]["mlp"]) for i in range(4)] == [
        False, True, False, True]
    assert enc_layers["layers_1"]["mlp"]["wi_0"].shape == (4, 16, 32)
    assert "logits_dense" not in params["decoder"]  # tied


def test_moe_outputs_collects_every_layer():
    cfg = tiny_config(num_encoder_layers=4, decoder_router="switch")
    enc, dec = tokens(0, (2, 8), 40), tokens(1, (2, 6), 40)
    model, params = init(cfg)
    _, state = run(model, params, enc, dec, mutable=["moe"])
    aux, metrics = moe_outputs(state["moe"])
    layers = {k.rsplit("/", 1)[0] for k in metrics}
    assert layers == {"encoder/layers_1", "encoder/layers_3", "decoder/layers_1"}
    r_enc, r_dec = cfg.encoder_moe.router, cfg.decoder_moe.router
    expected = sum(r_enc.z_loss_weight * metrics[f"encoder/layers_{i}/z_loss"] for i in (1, 3))
    expected += (r_dec.load_balance_weight * metrics["decoder/layers_1/load_balance_loss"] +
                 r_dec.z_loss_weight * metrics["decoder/layers_1/z_loss"])
    np.testing.assert_allclose(aux, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["decoder/layers_1/experts_per_token"], 1.0)


def test_encoder_padding_does_not_change_outputs():
    cfg = tiny_config(encoder_router="top_k")
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 5), 40)
    model, params = init(cfg)
    padded = jnp.pad(enc, ((0, 0), (0, 4)))
    a = run(model, params, enc, dec)
    b = run(model, params, padded, dec)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_decoder_is_causal():
    cfg = tiny_config()
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 8), 40)
    model, params = init(cfg)
    changed = dec.at[:, 5:].set(7)
    a = run(model, params, enc, dec)
    b = run(model, params, enc, changed)
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_packed_segments_equal_separate_examples():
    # Token-choice routing without capacity limits is per token, so packing
    # two examples into one row must give the same logits as running them apart.
    cfg = tiny_config(encoder_router="top_k")
    e1, e2 = tokens(0, (1, 5), 40), tokens(1, (1, 4), 40)
    d1, d2 = tokens(2, (1, 4), 40), tokens(3, (1, 3), 40)
    model, params = init(cfg)
    packed_enc = jnp.concatenate([e1, e2], 1)
    packed_dec = jnp.concatenate([d1, d2], 1)
    seg = lambda a, b: jnp.asarray([[1] * a + [2] * b])
    pos = lambda a, b: jnp.asarray([list(range(a)) + list(range(b))])
    packed = run(model, params, packed_enc, packed_dec,
                         encoder_segment_ids=seg(5, 4), decoder_segment_ids=seg(4, 3),
                         encoder_positions=pos(5, 4), decoder_positions=pos(4, 3))
    first = run(model, params, e1, d1)
    second = run(model, params, e2, d2)
    np.testing.assert_allclose(packed[:, :4], first, atol=1e-5)
    np.testing.assert_allclose(packed[:, 4:], second, atol=1e-5)


def test_dropout_only_when_enabled():
    cfg = tiny_config(dropout_rate=0.3)
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 5), 40)
    model, params = init(cfg)
    go = lambda seed, on: run(model, params, enc, dec, enable_dropout=on,
                              rngs={"dropout": jax.random.PRNGKey(seed),
                                    "router": jax.random.PRNGKey(seed)})
    np.testing.assert_array_equal(go(0, False), go(1, False))
    assert not np.allclose(go(0, True), go(1, True))


def test_bfloat16_activations_stay_close_with_float32_logits():
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 5), 40)
    model, params = init(tiny_config())
    half = Transformer(tiny_config(dtype="bfloat16"))
    a = run(model, params, enc, dec)
    b = run(half, params, enc, dec)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.15 * float(jnp.max(jnp.abs(a))))


def test_hash_router_gets_token_ids():
    cfg = tiny_config(encoder_router="hash", decoder_router="hash")
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 5), 40)
    model, params = init(cfg)
    _, state = run(model, params, enc, dec, mutable=["moe"])
    _, metrics = moe_outputs(state["moe"])
    np.testing.assert_allclose(metrics["encoder/layers_1/experts_per_token"], 1.0)


def test_expert_choice_in_decoder_needs_opt_in():
    with pytest.raises(ValueError, match="allow_decoder_expert_choice"):
        tiny_config(decoder_router="expert_choice")
    with pytest.raises(ValueError, match="batch_prioritized"):
        T5Config(decoder_moe=MoeConfig(interval=1, router=RouterConfig(
            "top_k", batch_prioritized=True)))
    with pytest.warns(UserWarning, match="leaks targets"):
        tiny_config(decoder_router="expert_choice", allow_decoder_expert_choice=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_config(encoder_router="expert_choice", decoder_router="switch")


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_heads=5 must divide d_model=16"):
        T5Config(d_model=16, num_heads=5, head_dim=None)
    with pytest.raises(ValueError, match="did you mean 'num_heads'"):
        from_mapping(T5Config, {"num_head": 4})
    with pytest.raises(ValueError, match=r"encoder_moe.router.num_experts must be >= 1"):
        from_mapping(T5Config, {"encoder_moe": {"router": {"num_experts": 0}}})
    with pytest.raises(ValueError, match=r"'encoder_moe.intervall'; did you mean 'interval'"):
        from_mapping(T5Config, {"encoder_moe": {"intervall": 2}})
    with pytest.raises(ValueError, match="dtype must be one of"):
        T5Config(dtype="float16")


def test_from_mapping_round_trip():
    from moejax.structured import to_mapping
    cfg = tiny_config(activations=("relu",))
    again = from_mapping(T5Config, to_mapping(cfg))
    assert again == cfg and hash(again) == hash(cfg)
