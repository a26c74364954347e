"""GShard top-2 with random routing of the second expert (Lepikhin et al. 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    balance_losses,
    require_rng,
    token_choice_inputs,
    token_choice_result,
)


def second_expert_keep_probability(g1, g2):
    """P(keep second expert) = min(1, 2 * g2 / (g1 + g2))."""
    return jnp.minimum(1.0, 2.0 * g2 / (g1 + g2))


def gshard_top2_route(logits, *, mask, rng, cfg, train, bias=None, segment=None
                      ) -> RoutingResult:
    """Top-1 always; the second-best expert kept at random in training.

    logits: float [G, T, E]; mask: bool [G, T]. In training the second
    expert is kept with `second_expert_keep_probability`; in evaluation it
    is always kept (deterministic eval). Weights are renormalised over the
    kept experts before capacity is applied (a token that later loses a
    place to capacity keeps its other weight as is). All first choices take
    capacity before any second choice. The load-balance loss counts both
    top-2 experts, as GShard's and flaxformer's do (before random routing),
    per `segment` tokens. `bias` is unused (the registry refuses one).
    """
    inputs = token_choice_inputs(logits, mask, cfg, train)
    gates, expert = jax.lax.top_k(inputs.probs, 2)
    if train:
        u = jax.random.uniform(require_rng(rng, cfg.name), gates.shape[:-1])
        keep2 = u < second_expert_keep_probability(gates[..., 0], gates[..., 1])
    else:
        keep2 = jnp.ones(gates.shape[:-1], bool)
    request = jnp.stack([jnp.ones_like(keep2), keep2], axis=-1)
    weight = jnp.where(request, gates, 0.0)
    weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    losses = balance_losses(inputs.logits, inputs.probs, inputs.mask, expert,
                            segment=segment)
    return token_choice_result(inputs, expert, weight, request, losses, cfg)
