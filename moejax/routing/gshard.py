"""GShard top-2 with random routing of the second expert (Lepikhin et al. 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (RoutingResult, balance_losses, check_logits, compute_capacity,
                                 require_rng, token_choice_result)


def second_expert_keep_probability(g1, g2):
    """P(keep second expert) = min(1, 2 * g2 / (g1 + g2))."""
    return jnp.minimum(1.0, 2.0 * g2 / (g1 + g2))


def gshard_top2_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """Top-1 always; the second-best expert kept at random in training.

    logits: float [G, T, E]; mask: bool [G, T]. In training the second
    expert is kept with `second_expert_keep_probability`; in evaluation it
    is always kept (deterministic eval). Weights are renormalised over the
    kept experts before capacity is applied (a token that later loses a
    place to capacity keeps its other weight as is). All first choices take
    capacity before any second choice.
    """
    mask = check_logits(logits, mask, cfg.num_experts)
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    gates, expert = jax.lax.top_k(probs, 2)
    if train:
        u = jax.random.uniform(require_rng(rng, cfg.name), gates.shape[:-1])
        keep2 = u < second_expert_keep_probability(gates[..., 0], gates[..., 1])
    else:
        keep2 = jnp.ones(gates.shape[:-1], bool)
    request = jnp.stack([jnp.ones_like(keep2), keep2], axis=-1)
    weight = jnp.where(request, gates, 0.0)
    weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    t, e = probs.shape[1:]
    capacity = compute_capacity(t, e, 2, cfg.capacity_factor_for(train))
    losses = balance_losses(logits, probs, mask)
    return token_choice_result(
        probs, mask, expert, weight, request, capacity, losses, cfg.loss_weights(),
        priority=gates[..., 0] if cfg.batch_prioritized else None)
