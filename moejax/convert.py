"""Hugging Face T5 / Switch Transformers checkpoints <-> moejax params.

    config, params = from_hf("google/switch-base-8")       # hub name or local dir
    config, params = from_hf(hf_model)                     # an in-memory model
    to_hf(config, params, "out_dir")                       # writes an HF checkpoint

Dense T5 maps to `T5ForConditionalGeneration`; a model with MoE layers to
`SwitchTransformersForConditionalGeneration`, which has non-gated experts,
a top-1 ('switch') router and MoE layers at i % step == 1. HF routes each
sequence with a fixed `expert_capacity`; moejax sizes capacity with capacity
factors, which the caller sets (`router_overrides`); None means no drops.
Needs `torch` and `transformers` (pip install -e '.[hf]').
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from moejax.ffn import input_kernel_names
from moejax.models.config import MoeConfig, T5Config
from moejax.models.scan import unscan_tree
from moejax.models.t5 import abstract_params
from moejax.routing import RouterConfig

ARCHITECTURES = ("t5", "switch_transformers")
# HF activation names -> moejax ACTIVATIONS.
HF_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu",
          "silu": "silu"}
MOEJAX_ACT = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}


def _hf_sparse_layers(num_layers: int, num_sparse: int) -> set[int]:
    """Which layers HF Switch makes sparse for `num_sparse` of `num_layers`."""
    if num_sparse <= 0:
        return set()
    step = num_layers // num_sparse
    return {i for i in range(num_layers) if i % step == 1 or step == 1}


def _layout_for(sparse: set[int], num_layers: int, where: str) -> dict[str, int | None]:
    """MoeConfig interval and offset that make exactly `sparse` MoE layers
    (offset None, the default, whenever it fits)."""
    for interval in range(num_layers + 1):
        for offset in (None, *range(interval)):
            moe = MoeConfig(interval=interval, offset=offset)
            if {i for i in range(num_layers) if moe.is_moe_layer(i)} == sparse:
                return {"interval": interval, "offset": offset}
    raise ValueError(f"{where}: HF sparse layers {sorted(sparse)} do not follow moejax's layout "
                     "(layer i is MoE iff i % interval == offset)")


def _activations(act: str, gated: bool) -> tuple[str, ...]:
    if act not in HF_ACT:
        raise ValueError(f"HF activation {act!r} is not supported; supported: {sorted(HF_ACT)}")
    return (HF_ACT[act], "linear") if gated else (HF_ACT[act],)


def _model_type(hf_config, source: str = "checkpoint") -> str:
    """The HF config's model_type, or a ValueError naming what it is when
    moejax cannot read it."""
    model_type = getattr(hf_config, "model_type", type(hf_config).__name__)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{source} is a {model_type!r} model; moejax.convert reads "
                         f"{' and '.join(ARCHITECTURES)}")
    return model_type


def config_from_hf(hf_config, sparse_layers=None, **router_overrides) -> T5Config:
    """T5Config for an HF T5Config / SwitchTransformersConfig. For Switch,
    `sparse_layers` = (encoder set, decoder set) as the HF model built them."""
    model_type = _model_type(hf_config)
    common = dict(vocab_size=hf_config.vocab_size, d_model=hf_config.d_model,
                  num_heads=hf_config.num_heads, head_dim=hf_config.d_kv, d_ff=hf_config.d_ff,
                  num_encoder_layers=hf_config.num_layers,
                  num_decoder_layers=hf_config.num_decoder_layers,
                  dropout_rate=hf_config.dropout_rate, layer_norm_eps=hf_config.layer_norm_epsilon,
                  relative_attention_num_buckets=hf_config.relative_attention_num_buckets,
                  relative_attention_max_distance=hf_config.relative_attention_max_distance)
    if model_type == "t5":
        return T5Config(**common, tie_embeddings=hf_config.scale_decoder_outputs,
                        activations=_activations(hf_config.dense_act_fn, hf_config.is_gated_act))
    if hf_config.router_bias:
        raise ValueError("HF Switch router_bias=True is not supported "
                         "(moejax routers have no bias)")
    # No capacity limit unless asked for: HF's expert_capacity is a token
    # count per expert that moejax's capacity factors cannot express, and
    # where HF drops nothing the converted model must not either.
    router = dict(name="switch", num_experts=hf_config.num_experts,
                  jitter_eps=hf_config.router_jitter_noise,
                  load_balance_weight=hf_config.router_aux_loss_coef,
                  z_loss_weight=hf_config.router_z_loss_coef, capacity_factor=None,
                  eval_capacity_factor=None)
    router.update(router_overrides)
    enc_sparse, dec_sparse = sparse_layers or (
        _hf_sparse_layers(hf_config.num_layers, hf_config.num_sparse_encoder_layers),
        _hf_sparse_layers(hf_config.num_decoder_layers, hf_config.num_sparse_decoder_layers))
    moe = lambda sparse, n, where: MoeConfig(**_layout_for(sparse, n, where),
                                             router=RouterConfig(**router))
    return T5Config(**common, tie_embeddings=hf_config.tie_word_embeddings,
                    activations=_activations(hf_config.dense_act_fn, False),
                    encoder_moe=moe(enc_sparse, hf_config.num_layers, "encoder"),
                    decoder_moe=moe(dec_sparse, hf_config.num_decoder_layers, "decoder"))


def _mapping(cfg: T5Config, switch: bool) -> list[tuple[str, str, str]]:
    """(HF key, moejax param path, how): 'T' transposes a Linear weight;
    'copy' keeps it; 'experts' stacks per-expert Linear weights (the HF key
    has '{e}' where the expert index goes)."""
    rows = [("shared.weight", "token_embedder/embedding", "copy")]
    attn = lambda hf, mj: [(f"{hf}.{a}.weight", f"{mj}/{b}", "T")
                           for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))]

    def ffn(hf, mj, moe: MoeConfig, i):
        if moe.is_moe_layer(i):
            names = input_kernel_names(moe.activations or cfg.activations)
            return ([(f"{hf}.mlp.router.classifier.weight", f"{mj}/router_kernel", "T")] +
                    [(f"{hf}.mlp.experts.expert_{{e}}.{n}.weight", f"{mj}/{n}", "experts")
                     for n in names + ["wo"]])
        sub = "mlp" if switch else "DenseReluDense"
        return [(f"{hf}.{sub}.{n}.weight", f"{mj}/{n}", "T")
                for n in input_kernel_names(cfg.activations) + ["wo"]]

    for stack, n, moe in (("encoder", cfg.num_encoder_layers, cfg.encoder_moe),
                          ("decoder", cfg.num_decoder_layers, cfg.decoder_moe)):
        if n:
            rows.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         f"{stack}/relpos_bias/rel_embedding", "T"))
        for i in range(n):
            hf, mj = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            if stack == "encoder":
                rows += attn(f"{hf}.0.SelfAttention", f"{mj}/attention")
                rows.append((f"{hf}.0.layer_norm.weight", f"{mj}/pre_attention_layer_norm/scale",
                             "copy"))
                ff = 1
            else:
                rows += attn(f"{hf}.0.SelfAttention", f"{mj}/self_attention")
                rows.append((f"{hf}.0.layer_norm.weight",
                             f"{mj}/pre_self_attention_layer_norm/scale", "copy"))
                rows += attn(f"{hf}.1.EncDecAttention", f"{mj}/encoder_decoder_attention")
                rows.append((f"{hf}.1.layer_norm.weight",
                             f"{mj}/pre_cross_attention_layer_norm/scale", "copy"))
                ff = 2
            rows += ffn(f"{hf}.{ff}", f"{mj}/mlp", moe, i)
            rows.append((f"{hf}.{ff}.layer_norm.weight", f"{mj}/pre_mlp_layer_norm/scale",
                         "copy"))
        rows.append((f"{stack}.final_layer_norm.weight", f"{stack}/{stack}_norm/scale", "copy"))
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", "decoder/logits_dense", "T"))
    return rows


def params_from_state_dict(cfg: T5Config, state: dict[str, Any], switch: bool) -> dict:
    """moejax params (nested dict of float32 numpy arrays) from an HF state
    dict of numpy arrays. Missing tensors and shape mismatches are errors."""
    expected = {k: v.shape for k, v in
                traverse_util.flatten_dict(abstract_params(cfg), sep="/").items()}
    rows = _mapping(cfg, switch)
    missing = [hf for hf, _, how in rows
               if (hf.format(e=0) if how == "experts" else hf) not in state]
    if missing:
        raise ValueError(f"HF checkpoint lacks {len(missing)} tensors moejax needs, e.g. "
                         f"{', '.join(missing[:5])}")
    for stack in ("encoder", "decoder"):
        key = f"{stack}.embed_tokens.weight"
        if key in state and not np.array_equal(state[key], state["shared.weight"]):
            raise ValueError(f"HF {key} differs from shared.weight; moejax (like T5) shares one "
                             "input embedding between encoder and decoder")
    flat = {}
    for hf, path, how in rows:
        if how == "experts":
            moe = cfg.encoder_moe if path.startswith("encoder") else cfg.decoder_moe
            value = np.stack([np.asarray(state[hf.format(e=e)]).T
                              for e in range(moe.router.num_experts)])
        else:
            value = np.asarray(state[hf])
            value = value.T if how == "T" else value
        if value.shape != expected[path]:
            raise ValueError(f"HF tensor {hf} has shape {value.shape} but moejax {path} needs "
                             f"{expected[path]}")
        flat[path] = value.astype(np.float32)
    absent = sorted(set(expected) - set(flat))
    if absent:
        raise ValueError(f"no HF tensor maps to moejax params {absent}")
    return traverse_util.unflatten_dict(flat, sep="/")


def _load_hf(model_or_path):
    import transformers
    if isinstance(model_or_path, (str, os.PathLike)):
        hf_config = transformers.AutoConfig.from_pretrained(model_or_path)
        model_type = _model_type(hf_config, f"checkpoint {str(model_or_path)!r}")
        cls = (transformers.T5ForConditionalGeneration if model_type == "t5"
               else transformers.SwitchTransformersForConditionalGeneration)
        return cls.from_pretrained(model_or_path)
    return model_or_path


def from_hf(model_or_path, **router_overrides) -> tuple[T5Config, dict]:
    """(T5Config, params) from an HF T5/Switch model, local directory or hub
    name. A Switch model's routers get no capacity limit (nothing dropped,
    so logits match HF wherever HF's expert_capacity drops nothing);
    `router_overrides` set RouterConfig fields of them, e.g.
    capacity_factor=1.25, eval_capacity_factor=2.0 for Switch's recipe."""
    model = _load_hf(model_or_path)
    hf_config = model.config
    switch = _model_type(hf_config) == "switch_transformers"
    sparse = None
    if switch:
        sparse = tuple({i for i, block in enumerate(stack.block) if block.is_sparse}
                       for stack in (model.encoder, model.decoder))
    elif router_overrides:
        raise ValueError("router_overrides apply to Switch models only; this is a dense T5")
    cfg = config_from_hf(hf_config, sparse, **router_overrides)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    return cfg, params_from_state_dict(cfg, state, switch)


def hf_config_from(cfg: T5Config):
    """The HF config (T5 or Switch) that represents `cfg`, or a ValueError
    saying what HF cannot represent. Capacity does not carry over: HF
    Switch's expert_capacity is a fixed token count per expert, not a
    factor, so the export keeps HF's default (64); set it on the exported
    config.json if your inputs need another."""
    import transformers
    common = dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.kv_dim,
                  d_ff=cfg.d_ff, num_layers=cfg.num_encoder_layers,
                  num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
                  dropout_rate=cfg.dropout_rate, layer_norm_epsilon=cfg.layer_norm_eps,
                  relative_attention_num_buckets=cfg.relative_attention_num_buckets,
                  relative_attention_max_distance=cfg.relative_attention_max_distance,
                  tie_word_embeddings=cfg.tie_embeddings, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1)
    acts = cfg.activations
    if not cfg.encoder_moe.interval and not cfg.decoder_moe.interval:
        gated = len(acts) == 2 and acts[1] == "linear"
        proj = acts[0] in MOEJAX_ACT and (len(acts) == 1 or gated) and (
            f"gated-{MOEJAX_ACT[acts[0]]}" if gated else MOEJAX_ACT[acts[0]])
        # HF reads 'gated-gelu' as the tanh GELU, so gated exact GELU has no name.
        if not proj or proj == "gated-gelu":
            raise ValueError(f"HF T5 cannot represent activations {acts}")
        return transformers.T5Config(feed_forward_proj=proj, **common)
    if len(acts) != 1 or acts[0] not in MOEJAX_ACT:
        raise ValueError(f"HF Switch has non-gated FFNs; cannot represent activations {acts}")
    sparse = {}
    for stack, n, moe in (("encoder", cfg.num_encoder_layers, cfg.encoder_moe),
                          ("decoder", cfg.num_decoder_layers, cfg.decoder_moe)):
        if moe.interval and (moe.router.name != "switch" or (moe.activations or acts) != acts
                             or (moe.d_ff or cfg.d_ff) != cfg.d_ff):
            raise ValueError(f"HF Switch needs {stack} experts with the 'switch' router and the "
                             "dense FFN's shape and activation")
        layers = {i for i in range(n) if moe.is_moe_layer(i)}
        if _hf_sparse_layers(n, len(layers)) != layers:
            raise ValueError(f"HF Switch cannot place {stack} MoE layers at {sorted(layers)}")
        sparse[stack] = len(layers)
    routers = [m.router for m in (cfg.encoder_moe, cfg.decoder_moe) if m.interval]
    if len({r.num_experts for r in routers}) > 1:
        raise ValueError("HF Switch needs the same num_experts in encoder and decoder")
    return transformers.SwitchTransformersConfig(
        num_experts=routers[0].num_experts, num_sparse_encoder_layers=sparse["encoder"],
        num_sparse_decoder_layers=sparse["decoder"], dense_act_fn=MOEJAX_ACT[acts[0]],
        router_jitter_noise=routers[0].jitter_eps, router_z_loss_coef=routers[0].z_loss_weight,
        router_aux_loss_coef=routers[0].load_balance_weight, **common)


def to_hf_model(cfg: T5Config, params):
    """An in-memory HF model holding `params` (either layers layout)."""
    import torch
    import transformers
    hf_config = hf_config_from(cfg)
    switch = hf_config.model_type == "switch_transformers"
    cls = (transformers.SwitchTransformersForConditionalGeneration if switch
           else transformers.T5ForConditionalGeneration)
    model = cls(hf_config)
    flat = traverse_util.flatten_dict(unscan_tree(jax.device_get(params)), sep="/")
    state = {}
    for hf, path, how in _mapping(cfg, switch):
        value = np.asarray(flat[path], np.float32)
        if how == "experts":
            state.update({hf.format(e=e): value[e].T for e in range(value.shape[0])})
        else:
            state[hf] = value.T if how == "T" else value
    for stack in ("encoder", "decoder"):
        state[f"{stack}.embed_tokens.weight"] = state["shared.weight"]
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["shared.weight"]
    if not cfg.tie_embeddings:
        # HF T5 always builds lm_head tied to the input embedding; untie it
        # first so loading one does not overwrite the other.
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def to_hf(cfg: T5Config, params, out_dir: str) -> str:
    """Writes an HF checkpoint directory. Everything is written to a
    temporary sibling first and renamed at the end, so a failure leaves
    nothing behind; an existing non-empty `out_dir` is refused."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"export directory {out_dir!r} exists and is not empty")
    model = to_hf_model(cfg, params)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".moejax-export-", dir=parent)
    try:
        model.save_pretrained(tmp)
        # HF's T5 config stores tie_word_embeddings=True whatever it was
        # given; untied T5.1.1 checkpoints must say False to load unscaled.
        path = os.path.join(tmp, "config.json")
        with open(path) as f:
            data = json.load(f)
        data["tie_word_embeddings"] = cfg.tie_embeddings
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
