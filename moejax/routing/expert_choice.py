"""Expert Choice routing (Zhou et al. 2022), with optional EC-CAP."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (RoutingResult, check_logits, compute_capacity,
                                 routing_metrics, z_loss)


def expert_choice_route(logits, *, mask, rng, cfg, train) -> RoutingResult:
    """Each expert takes its top-C tokens of the group by S[:, e].

    logits: float [G, T, E]; mask: bool [G, T]. S = softmax over experts;
    C = ceil(capacity_factor * T / E) (at most T); ties go to the earlier
    token. Padding tokens are never chosen (an expert of a mostly padded
    group gets fewer than C tokens). With cfg.max_experts_per_token = m
    (EC-CAP) a token keeps only the m experts with the highest S[t, e] among
    those that chose it. Combine weight = S[t, e]. Balanced by construction:
    the only aux loss is the z-loss. `rng` is unused (deterministic).
    """
    mask = check_logits(logits, mask, cfg.num_experts)
    cf = cfg.capacity_factor_for(train)
    if cf is None:
        raise ValueError("expert_choice needs capacity_factor/eval_capacity_factor > 0; "
                         "None (no capacity) would make every expert take every token")
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    g, t, e = probs.shape
    capacity = compute_capacity(t, e, 1, cf)
    scores = jnp.where(mask[..., None], probs, -1.0).transpose(0, 2, 1)  # [G, E, T]
    top_scores, token = jax.lax.top_k(scores, capacity)  # [G, E, C]
    valid = top_scores >= 0
    gi = jnp.arange(g)[:, None, None]
    ei = jnp.arange(e)[None, :, None]
    if cfg.max_experts_per_token is not None:
        chosen = jnp.zeros((g, t, e), bool).at[gi, token, ei].max(valid)
        ranked = jnp.argsort(-jnp.where(chosen, probs, -1.0), axis=-1, stable=True)
        rank = jnp.argsort(ranked, axis=-1)
        valid = valid & (rank < cfg.max_experts_per_token)[gi, token, ei]
    weight = jnp.where(valid, probs[gi, token, ei], 0.0)
    flat = lambda a: a.reshape(g, e * capacity)
    expert = jnp.broadcast_to(ei, (g, e, capacity)).astype(jnp.int32)
    slot = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (g, e, capacity))
    losses = {"z_loss": z_loss(logits, mask)}
    return RoutingResult(
        token=flat(token).astype(jnp.int32), expert=flat(expert), slot=flat(slot),
        weight=flat(weight), valid=flat(valid), aux_loss=cfg.z_loss_weight * losses["z_loss"],
        metrics=routing_metrics(probs, mask, flat(token), flat(expert), flat(valid), losses),
        num_experts=e, capacity=capacity)
