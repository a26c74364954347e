"""Dynamic top-p routing (Huang et al. 2024)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    balance_losses,
    entropy,
    masked_mean,
    token_choice_inputs,
    token_choice_result,
)
from moejax.routing.top_k import normalize


def validate(cfg) -> None:
    if not 0 < cfg.threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {cfg.threshold}")


def top_p_route(logits, *, mask, rng, cfg, train, bias=None, segment=None) -> RoutingResult:
    """Each token takes the smallest set of experts whose probability reaches
    cfg.threshold.

    logits: float [G, T, E]; mask: bool [G, T]. Experts are taken in order
    of descending p until the cumulative probability reaches the threshold
    (so 1..E experts, at most cfg.max_experts_per_token). Weights are p
    (renormalised over the set if cfg.normalize_weights). Capacity is sized
    for cfg.k experts per token on average; use capacity_factor=None for no
    drops. Aux losses: load balance over the selected experts, z-loss and
    the entropy loss mean(-sum_e p_e log p_e), weighted by
    cfg.entropy_weight, which sharpens the router so that fewer experts are
    needed; the balance loss per `segment` tokens. `rng` and `bias` are
    unused.
    """
    inputs = token_choice_inputs(logits, mask, cfg, train)
    max_k = cfg.max_experts_per_token or cfg.num_experts
    sorted_p, expert = jax.lax.top_k(inputs.probs, max_k)
    before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
    request = before < cfg.threshold
    weight = normalize(jnp.where(request, sorted_p, 0.0), cfg)
    losses = {**balance_losses(inputs.logits, inputs.probs, inputs.mask, expert, request,
                               segment),
              "entropy_loss": masked_mean(entropy(inputs.probs), inputs.mask)}
    return token_choice_result(inputs, expert, weight, request, losses, cfg)
