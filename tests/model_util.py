"""Small model configs and inputs shared by the model, decoding and HF tests."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from moejax.models import MoeConfig, T5Config, Transformer, abstract_params
from moejax.routing import RouterConfig


def tiny_config(encoder_router="expert_choice", decoder_router="top_k", **kw):
    """2+2 layers, MoE in the second layer of each stack; no capacity drops
    in eval so decoding variants agree."""
    def router(name):
        no_drops = {} if name == "expert_choice" else {"eval_capacity_factor": None}
        return RouterConfig(name, num_experts=4, **no_drops)
    base = dict(vocab_size=40, d_model=16, num_heads=4, head_dim=None, d_ff=32,
                num_encoder_layers=2, num_decoder_layers=2,
                encoder_moe=MoeConfig(interval=2, router=router(encoder_router)),
                decoder_moe=MoeConfig(interval=2, router=router(decoder_router)))
    base.update(kw)
    return T5Config(**base)


def tokens(seed, shape, vocab, pad_from=None):
    t = np.random.RandomState(seed).randint(2, vocab, shape).astype(np.int32)
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            t[row, start:] = 0
    return jnp.asarray(t)


def init(cfg, seed=0):
    """Model and random params of the right shapes. Values come from numpy
    (std 1/sqrt(fan_in), norms 1): compiling the model's own initialisers
    takes seconds per config, which the tests that need any params skip."""
    model = Transformer(cfg)
    shapes = abstract_params(cfg)
    rng = np.random.RandomState(seed)

    def value(path, leaf):
        name = path[-1].key
        if leaf.ndim == 1:
            return jnp.ones(leaf.shape, leaf.dtype)
        std = 1.0 if name in ("embedding", "rel_embedding") else leaf.shape[-2] ** -0.5
        return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)

    return model, jax.tree_util.tree_map_with_path(value, shapes)


STATIC = ("mutable", "method", "enable_dropout", "capture_intermediates")


def run(model, params, *args, rngs=None, **kwargs):
    """model.apply under jit (eager flax apply compiles op by op: slow).
    The Python-valued kwargs in STATIC are static."""
    static = tuple(sorted((k, v if not isinstance(v, list) else tuple(v))
                          for k, v in kwargs.items() if k in STATIC))
    arrays = {k: v for k, v in kwargs.items() if k not in dict(static)}
    return _jitted(model, static)(params, rngs, args, arrays)


@functools.cache
def _jitted(model, static):
    static = {k: list(v) if k == "mutable" else v for k, v in static}
    return jax.jit(lambda p, r, a, kw: model.apply({"params": p}, *a, rngs=r, **kw, **static))
