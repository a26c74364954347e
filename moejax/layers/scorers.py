"""Scorers: how a MoeLayer turns tokens into router logits [G, T, E].

A router's registry entry names its scorer (`RouterSpec.scorer`); each
scorer here creates its params on the MoeLayer that calls it (so param
names stay `router_*` on the layer, as checkpoints and HF conversion expect)
and calls a pure function of `moejax.routing.scores`. Add one with
`register_scorer(name, fn)`, fn(layer, x [G, T, d], token_ids [G, T] | None,
rng, train) -> float32 logits [G, T, E].
"""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from moejax.layers.names import FIXED_ROUTER_AXIS
from moejax.routing.scores import cosine_logits, hash_logits, linear_logits, load_hash_table


def linear(layer, x, token_ids, rng, train):
    """x @ W_r [d, E + null experts] (Switch jitter on x in training); W_r's
    expert axis is FIXED_ROUTER_AXIS when the router is not trainable."""
    del token_ids
    cfg = layer.router
    axes = ("embed", "router_experts" if cfg.spec.trainable else FIXED_ROUTER_AXIS)
    kernel = layer.param("router_kernel", nn.with_logical_partitioning(layer.router_init, axes),
                         (x.shape[-1], cfg.num_choices), jnp.float32)
    return linear_logits(x, kernel, jitter_eps=cfg.jitter_eps, rng=rng, train=train)


def cosine(layer, x, token_ids, rng, train):
    """X-MoE (Chi et al. 2022): cos(x W_p, e_j) / tau on a `xmoe_dim`-dim
    hypersphere. Expert embeddings start orthogonal (torchscale's init, gain
    irrelevant after normalisation) and tau at `xmoe_temperature`, so that
    routing starts near uniform; log tau is learned."""
    del token_ids, rng, train
    cfg = layer.router
    d, r, e = x.shape[-1], cfg.xmoe_dim, cfg.num_choices
    proj = layer.param("router_projection", nn.with_logical_partitioning(
        layer.router_init, ("embed", "router_proj")), (d, r), jnp.float32)
    emb = layer.param("router_expert_embeddings", nn.with_logical_partitioning(
        nn.initializers.orthogonal(), ("router_proj", "router_experts")), (r, e), jnp.float32)
    # Shape [1] rather than [] so that it carries a router axis.
    log_t = layer.param("router_log_temperature", nn.with_logical_partitioning(
        nn.initializers.constant(jnp.log(cfg.xmoe_temperature)), ("router_scale",)), (1,),
        jnp.float32)
    return cosine_logits(x, proj, emb, log_t)


def hashed(layer, x, token_ids, rng, train):
    """k fixed experts per token id (Roller et al. 2021; DeepSeek-V4's
    token-id table when router.hash_table is set); no params."""
    del x, rng, train
    cfg = layer.router
    if token_ids is None:
        raise ValueError(f"router {cfg.name!r} needs token_ids [batch, length]")
    table = load_hash_table(cfg.hash_table) if cfg.hash_table else None
    return hash_logits(token_ids, cfg.num_experts, cfg.k, table)


SCORERS: dict[str, Callable] = {"linear": linear, "cosine": cosine, "hash": hashed}


def register_scorer(name: str, fn: Callable) -> None:
    if name in SCORERS:
        raise ValueError(f"scorer name {name!r} is already registered")
    SCORERS[name] = fn


def get_scorer(name: str) -> Callable:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(sorted(SCORERS))}") \
            from None
