"""Dynamic top-p routing (Huang et al. 2024)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (RoutingResult, balance_losses, check_logits, compute_capacity,
                                 entropy, masked_mean, token_choice_result)


def top_p_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """Each token takes the smallest set of experts whose probability reaches
    cfg.threshold.

    logits: float [G, T, E]; mask: bool [G, T]. Experts are taken in order
    of descending p until the cumulative probability reaches the threshold
    (so 1..E experts, at most cfg.max_experts_per_token). Weights are p
    (renormalised over the set if cfg.normalize_weights). Capacity is sized
    for cfg.k experts per token on average; use capacity_factor=None for no
    drops. Aux losses: load balance, z-loss and the entropy loss
    mean(-sum_e p_e log p_e), weighted by cfg.entropy_weight, which sharpens
    the router so that fewer experts are needed. `rng` is unused.
    """
    mask = check_logits(logits, mask, cfg.num_experts)
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    t, e = probs.shape[1:]
    max_k = cfg.max_experts_per_token or e
    sorted_p, expert = jax.lax.top_k(probs, max_k)
    before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
    request = before < cfg.threshold
    weight = jnp.where(request, sorted_p, 0.0)
    if cfg.normalize_weights:
        weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    capacity = compute_capacity(t, e, cfg.k, cfg.capacity_factor_for(train))
    losses = {**balance_losses(logits, probs, mask),
              "entropy_loss": masked_mean(entropy(probs), mask)}
    return token_choice_result(probs, mask, expert, weight, request, capacity, losses,
                               cfg.loss_weights(),
                               priority=sorted_p[..., 0] if cfg.batch_prioritized else None)
