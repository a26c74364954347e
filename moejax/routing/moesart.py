"""MOESART: a k-sparse sampled approximation of the dense softmax mixture.

The published abstract leaves the estimator open; moejax makes these
choices, each selectable in RouterConfig:

sampling (training only; evaluation always takes the k most probable):
  'without_replacement' (default): Gumbel-top-k, i.e. add Gumbel(0, 1) noise
    to the logits and take the top k. This draws k distinct experts in
    sequence, each with probability proportional to p among those not yet
    drawn (Plackett-Luce), so every token uses exactly k experts.
  'with_replacement': k independent draws from Categorical(p); repeated
    experts are merged, so a token uses between 1 and k experts.
sample_weighting:
  'renormalized' (default): w_e = p_e / sum_{e' in sample} p_e'. The sparse
    mixture is a self-normalised estimate of sum_e p_e f_e(x) and gradients
    reach every sampled p_e.
  'softmax': w_e = p_e, the raw probabilities.
Capacity is sized for k experts per token; aux losses are the Switch load
balance loss (on the top-1 expert) and the router z-loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (RoutingResult, balance_losses, check_logits, compute_capacity,
                                 require_rng, token_choice_result)


def moesart_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """logits: float [G, T, E]; mask: bool [G, T]; k = cfg.k."""
    mask = check_logits(logits, mask, cfg.num_experts)
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    k = cfg.k
    request = jnp.ones(logits.shape[:2] + (k,), bool)
    if not train:
        _, expert = jax.lax.top_k(probs, k)
    elif cfg.sampling == "without_replacement":
        gumbel = jax.random.gumbel(require_rng(rng, cfg.name), logits.shape)
        _, expert = jax.lax.top_k(logits + gumbel, k)
    else:
        expert = jax.random.categorical(require_rng(rng, cfg.name), logits[..., None, :],
                                        shape=request.shape)
        earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [i, j]: draw j precedes draw i
        repeat = jnp.any((expert[..., :, None] == expert[..., None, :]) & earlier, axis=-1)
        request = ~repeat
    chosen = jnp.where(request, jnp.take_along_axis(probs, expert, axis=-1), 0.0)
    if cfg.sample_weighting == "renormalized":
        weight = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
    else:
        weight = chosen
    t, e = probs.shape[1:]
    capacity = compute_capacity(t, e, k, cfg.capacity_factor_for(train))
    losses = balance_losses(logits, probs, mask)
    return token_choice_result(probs, mask, expert, weight, request, capacity, losses,
                               cfg.loss_weights(),
                               priority=jnp.max(probs, -1) if cfg.batch_prioritized else None)
