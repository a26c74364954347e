"""Token-choice top-k routers: Switch top-1, general top-k, V-MoE."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (RoutingResult, balance_losses, check_logits, compute_capacity,
                                 require_rng, token_choice_result)


def _route_top_k(logits, mask, rng, cfg, train, noise_std: float, prioritized: bool):
    mask = check_logits(logits, mask, cfg.num_experts)
    logits = logits.astype(jnp.float32)
    routed = logits
    if train and noise_std > 0:
        routed = logits + noise_std * jax.random.normal(require_rng(rng, cfg.name), logits.shape)
    probs = jax.nn.softmax(routed, axis=-1)
    weight, expert = jax.lax.top_k(probs, cfg.k)
    if cfg.normalize_weights:
        weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    t, e = probs.shape[1:]
    capacity = compute_capacity(t, e, cfg.k, cfg.capacity_factor_for(train))
    losses = balance_losses(logits, probs, mask)
    return token_choice_result(
        probs, mask, expert, weight, jnp.ones(expert.shape, bool), capacity, losses,
        cfg.loss_weights(), priority=jnp.max(probs, axis=-1) if prioritized else None)


def top_k_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """Each token takes its k most probable experts (Switch when k = 1).

    logits: float [G, T, E]; mask: bool [G, T] (False = padding).
    Weights are the chosen probabilities (renormalised over the k if
    cfg.normalize_weights). Places at an expert go to first choices before
    second ones, by position or, with cfg.batch_prioritized, by descending
    max probability. Aux losses: load balance (on top-1) and z-loss.
    """
    return _route_top_k(logits, mask, rng, cfg, train, 0.0, cfg.batch_prioritized)


def vmoe_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """V-MoE: top-k on softmax(logits + N(0, noise_std^2)) in training
    (noise_std defaults to 1/E), always batch-prioritised."""
    noise = 1.0 / cfg.num_experts if cfg.noise_std is None else cfg.noise_std
    return _route_top_k(logits, mask, rng, cfg, train, noise, True)
