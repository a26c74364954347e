"""HF transformers parity: random-init T5 / Switch models converted to moejax
give the same encoder outputs, logits, chosen experts and greedy decodes."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from model_util import init, run, tokens
from script_util import load_script

from moejax import convert
from moejax.layers.attention import relative_position_buckets
from moejax.models import MoeConfig, T5Config, Transformer, abstract_params
from moejax.models.decoding import generate
from moejax.routing import RouterConfig
from moejax.train.checkpoint import CheckpointError
from moejax.train.init import load_params

VOCAB = 64
SHAPE = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4, dropout_rate=0.0)


def t5(tied, proj):
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        num_layers=2, num_decoder_layers=3, tie_word_embeddings=tied, feed_forward_proj=proj,
        **SHAPE))


def switch(experts, layers, sparse, tied=True):
    model = transformers.SwitchTransformersForConditionalGeneration(
        transformers.SwitchTransformersConfig(
            num_layers=layers, num_sparse_encoder_layers=sparse, num_decoder_layers=layers,
            num_sparse_decoder_layers=sparse, num_experts=experts, expert_capacity=64,
            tie_word_embeddings=tied, **SHAPE))
    # HF unties the encoder/decoder input embeddings along with the output
    # when tie_word_embeddings=False; Switch checkpoints share one input table.
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared
    return model


MODELS = {
    "t5_untied_gated_gelu": lambda: t5(False, "gated-gelu"),
    "t5_tied_relu": lambda: t5(True, "relu"),
    "switch_4_experts_step_2": lambda: switch(4, 4, 2),
    # Sparse step 3: HF puts experts at layers 1 and 4 (i % 3 == 1): offset 1.
    "switch_4_experts_step_3": lambda: switch(4, 6, 2),
    "switch_8_experts_every_layer_untied": lambda: switch(8, 2, 2, tied=False),
}


def hf_model(name):
    torch.manual_seed(sum(map(ord, name)))
    return MODELS[name]().eval()


def convert_model(hf):
    # HF gives every sequence `expert_capacity` (64) places: no drops at these
    # lengths, and an import's default is no capacity limit.
    return convert.from_hf(hf)


def inputs():
    enc = np.array(tokens(0, (3, 20), VOCAB, pad_from=[20, 14, 17]))
    dec = np.array(tokens(1, (3, 9), VOCAB))
    dec[:, 0] = 0
    return enc, dec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_and_experts_match_hf(name):
    hf = hf_model(name)
    cfg, params = convert_model(hf)
    enc, dec = inputs()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                 decoder_input_ids=torch.tensor(dec), output_router_logits=True)
    model = Transformer(cfg)
    logits = run(model, params, jnp.asarray(enc), jnp.asarray(dec))
    encoded = run(model, params, jnp.asarray(enc), method="encode")
    real = enc > 0
    np.testing.assert_allclose(np.asarray(encoded)[real],
                               out.encoder_last_hidden_state.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), atol=1e-4)
    if cfg.encoder_moe.interval:
        ours = router_logits(model, params, enc, dec)
        theirs = [t.numpy() for t in out.encoder_router_logits + out.decoder_router_logits]
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            a = a.reshape(b.shape)
            # Padding positions are never routed; compare real tokens only.
            mask = real if a.shape[1] == enc.shape[1] else np.ones(a.shape[:2], bool)
            np.testing.assert_allclose(a[mask], b[mask], atol=1e-4)
            np.testing.assert_array_equal(a.argmax(-1)[mask], b.argmax(-1)[mask])


def is_router_logits(module, method_name):
    return method_name == "router_logits"


def router_logits(model, params, enc, dec):
    _, state = run(model, params, jnp.asarray(enc), jnp.asarray(dec),
                   capture_intermediates=is_router_logits, mutable=["intermediates"])
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    order = lambda key: (not key.startswith("encoder"), int(key.split("/")[1].split("_")[1]))
    return [np.asarray(flat[k][0]) for k in sorted(flat, key=order)]


@pytest.mark.parametrize("name", ["t5_untied_gated_gelu", "switch_4_experts_step_2"])
def test_greedy_decoding_matches_hf_generate(name):
    hf = hf_model(name)
    cfg, params = convert_model(hf)
    enc, _ = inputs()
    # use_cache=False: HF's cache assumes as many decoder as encoder layers.
    with torch.no_grad():
        expected = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                               max_new_tokens=8, do_sample=False, num_beams=1, use_cache=False,
                               decoder_start_token_id=0, eos_token_id=1, pad_token_id=0).numpy()
    ours = np.asarray(generate(Transformer(cfg), params, enc, max_length=8).tokens)
    expected = np.pad(expected[:, 1:], ((0, 0), (0, 8 - expected.shape[1] + 1)))
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_round_trip_is_exact(name, tmp_path):
    cfg, _ = convert_model(hf_model(name))
    if name == "switch_4_experts_step_3":
        assert (cfg.encoder_moe.interval, cfg.encoder_moe.offset) == (3, 1)
        assert [cfg.decoder_moe.is_moe_layer(i) for i in range(6)] == [0, 1, 0, 0, 1, 0]
    _, params = init(cfg, seed=3)
    out = convert.to_hf(cfg, params, str(tmp_path / "export"))
    again_cfg, again = convert.from_hf(out)
    assert again_cfg == cfg
    flat, flat_again = (traverse_util.flatten_dict(p, sep="/") for p in (params, again))
    assert flat.keys() == flat_again.keys()
    for key in flat:
        np.testing.assert_array_equal(np.asarray(flat[key]), flat_again[key], err_msg=key)


def test_relative_position_buckets_match_hf():
    rel = torch.arange(-300, 301)
    hf_bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (16, 40)):
            expected = hf_bucket(rel, bidirectional, buckets, distance).numpy()
            ours = relative_position_buckets(300, bidirectional, buckets, distance)
            np.testing.assert_array_equal(ours, expected)


def test_import_errors(tmp_path):
    bert_dir = tmp_path / "bert"
    transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=8).save_pretrained(bert_dir)
    with pytest.raises(ValueError, match="'bert' model; moejax.convert reads t5 and "
                                         "switch_transformers"):
        convert.from_hf(str(bert_dir))
    hf = hf_model("t5_tied_relu")
    cfg = convert.config_from_hf(hf.config)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    del state["decoder.block.1.layer.0.SelfAttention.k.weight"]
    with pytest.raises(ValueError,
                       match="lacks 1 tensors.*decoder.block.1.layer.0.SelfAttention.k"):
        convert.params_from_state_dict(cfg, state, switch=False)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    state["encoder.final_layer_norm.weight"] = np.ones(5, np.float32)
    with pytest.raises(ValueError, match=r"encoder.final_layer_norm.weight has shape \(5,\)"):
        convert.params_from_state_dict(cfg, state, switch=False)


def test_export_refuses_what_hf_cannot_hold(tmp_path):
    gated_experts = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32,
                             num_encoder_layers=2, num_decoder_layers=2,
                             encoder_moe=MoeConfig(interval=2, router=RouterConfig("switch", 4)))
    _, params = init(gated_experts)
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="non-gated"):
        convert.to_hf(gated_experts, params, str(target))
    assert not target.exists() and os.listdir(tmp_path) == []
    target.mkdir()
    (target / "keep.txt").write_text("x")
    dense = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1,
                     num_decoder_layers=1)
    _, params = init(dense)
    with pytest.raises(FileExistsError, match="not empty"):
        convert.to_hf(dense, params, str(target))


@pytest.mark.parametrize("acts", [("gelu",), ("gelu_exact",), ("relu",), ("silu", "linear"),
                                  ("gelu", "linear"), ("relu", "linear")])
def test_activation_names_survive_export_config(acts):
    cfg = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32, activations=acts)
    hf_config = convert.hf_config_from(cfg)
    assert convert.config_from_hf(hf_config).activations == acts
    # Saved configs rebuild dense_act_fn from feed_forward_proj.
    again = transformers.T5Config(feed_forward_proj=hf_config.feed_forward_proj)
    assert convert.config_from_hf(again).activations[0] == acts[0]


def test_gated_exact_gelu_has_no_hf_name():
    cfg = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32,
                   activations=("gelu_exact", "linear"))
    with pytest.raises(ValueError, match="HF T5 cannot represent activations"):
        convert.hf_config_from(cfg)


def test_init_checkpoint_from_hf_directory(tmp_path):
    hf = hf_model("switch_4_experts_step_2")
    hf.save_pretrained(tmp_path)
    cfg, params = convert.from_hf(hf)
    loaded = load_params(f"hf:{tmp_path}", abstract_params(cfg))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    # into a scanned model (HF layers are unscanned: converted), and back out
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
    scanned = load_params(f"hf:{tmp_path}", abstract_params(scanned_cfg))
    assert scanned["decoder"]["blocks"]["layers_1"]["mlp"]["wo"].shape[0] == 2
    again = convert.from_hf(convert.to_hf(scanned_cfg, scanned, str(tmp_path / "out")))[1]
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="not in the model: .*router"):
        dense = convert.config_from_hf(hf.config, (set(), set()))
        load_params(f"hf:{tmp_path}", abstract_params(dense))


def test_bench_counts_matmul_flops_as_torch_does():
    """The benchmark's per-FLOP ratio divides moejax's jaxpr count by torch's
    FlopCounterMode count: both must count the same train step the same way."""
    bench = load_script("bench_vs_hf")
    x, w1, w2 = (np.random.RandomState(i).randn(*s).astype(np.float32)
                 for i, s in enumerate([(12, 8), (8, 16), (16, 4)]))

    def loss(params, x):
        a, b = params
        return jnp.sum(jax.nn.relu(x @ a) @ b)

    jaxpr = jax.make_jaxpr(jax.grad(loss))((w1, w2), x).jaxpr
    tw1, tw2 = (torch.tensor(v, requires_grad=True) for v in (w1, w2))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        (torch.relu(torch.tensor(x) @ tw1) @ tw2).sum().backward()
    # forward 2*12*8*16 + 2*12*16*4; backward: both weight gradients and the
    # hidden gradient (x needs none)
    hand = 2 * 12 * 8 * 16 + 2 * 12 * 16 * 4 + 2 * (8 * 12 * 16 + 16 * 12 * 4 + 12 * 4 * 16)
    assert bench.matmul_flops(jaxpr) == counter.get_total_flops() == hand

    def scanned(x):
        return jax.lax.scan(lambda c, _: (jax.jit(lambda c: c @ w1 @ w1.T)(c), None), x, None,
                            length=3)[0]
    assert bench.matmul_flops(jax.make_jaxpr(scanned)(x).jaxpr) == 3 * 2 * (2 * 12 * 8 * 16)
