"""The result type every router returns, and the maths routers share.

Shapes: a batch of tokens is split into G groups of T tokens; E experts;
each group has A assignment slots (A = T*K for token choice with K choices
per token, A = E*C for expert choice). Capacity C is the number of tokens an
expert processes per group.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class RoutingResult:
    """Active (token, expert, slot) assignments of one routing decision.

    token:   int32 [G, A]  token position inside its group, in [0, T).
    expert:  int32 [G, A]  expert index, in [0, E).
    slot:    int32 [G, A]  position in the expert's per-group buffer, in
             [0, capacity) wherever `valid`.
    weight:  float32 [G, A] combine weight; exactly 0 where not `valid`.
    valid:   bool [G, A]   the assignment is active (not padding, not dropped
             for capacity, not rejected by the router).
    aux_loss: float32 []   weighted sum of the router's auxiliary losses; add
             it to the training loss.
    metrics: dict of float32 arrays: `dropped_fraction` [], `expert_load`
             [E] (fraction of active assignments per expert), `max_violation`
             [] (E * max expert_load - 1), `dead_experts` [] (fraction of
             experts with no assignment),
             `experts_per_token` [], `experts_per_token_hist` [E + 1] (fraction
             of tokens given exactly 0, 1, ..., E experts), `router_entropy` [],
             and the unweighted
             aux losses the router computed (`load_balance_loss`, `z_loss`,
             `entropy_loss`).
    num_experts, capacity: static ints (E, C).
    """

    token: Array
    expert: Array
    slot: Array
    weight: Array
    valid: Array
    aux_loss: Array
    metrics: dict[str, Array]
    num_experts: int = flax.struct.field(pytree_node=False)
    capacity: int = flax.struct.field(pytree_node=False)


def compute_capacity(num_tokens: int, num_experts: int, k: float,
                     capacity_factor: float | None) -> int:
    """C = ceil(capacity_factor * T * k / E), at most T; None means no drops (C = T).

    No expert can receive a token twice, so C = T already guarantees that
    nothing is dropped.
    """
    if capacity_factor is None:
        return num_tokens
    return max(1, min(num_tokens, math.ceil(capacity_factor * num_tokens * k / num_experts)))


def masked_mean(x: Array, mask: Array, axis: Any = None) -> Array:
    """Mean of `x` over positions where `mask` is true (0 when none are)."""
    mask = mask.astype(jnp.float32)
    total = jnp.sum(x * mask, axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def entropy(probs: Array) -> Array:
    """-sum p log p over the last axis, with 0 log 0 = 0."""
    positive = probs > 0
    return -jnp.sum(jnp.where(positive, probs * jnp.log(jnp.where(positive, probs, 1.0)), 0.0), -1)


def load_balance_loss(probs: Array, expert: Array, mask: Array,
                      selected: Array | None = None, segment: int | None = None) -> Array:
    """Switch/GShard balance loss E * sum_e f_e * P_e, averaged over segments.

    probs: [G, T, E]; expert: int [G, T, K] each token's K choices (before
    capacity); selected: bool [G, T, K] which choices the router made (None:
    all); mask: bool [G, T]. f_e is the fraction of (non-padding) tokens of
    a segment that selected e, counting every selected expert as
    flaxformer's `_load_balancing_loss` does (so sum_e f_e is the mean
    experts per token), and P_e the segment's mean router probability of e;
    K at perfect balance. A segment is `segment` consecutive tokens of the
    flattened [G * T] (None: a routing group, T): a sequence for
    DeepSeek-V3's sequence-wise loss, G * T for Megatron-Core's global-batch
    loss (under jit the means span every device: the arrays are global).
    """
    g, t = mask.shape
    segment = segment or t
    if (g * t) % segment:
        raise ValueError(f"balance segment of {segment} tokens must divide the {g * t} "
                         f"tokens routed together")
    regroup = lambda a: a.reshape(g * t // segment, segment, *a.shape[2:])
    probs, expert, mask = regroup(probs), regroup(expert), regroup(mask)
    selected = None if selected is None else regroup(selected)
    num_experts = probs.shape[-1]
    hit = jax.nn.one_hot(expert, num_experts, dtype=jnp.float32)  # [G, T, K, E]
    if selected is not None:
        hit = hit * selected[..., None]
    m = mask[..., None]
    f = masked_mean(jnp.max(hit, axis=2), m, axis=1)
    p = masked_mean(probs, m, axis=1)
    return jnp.mean(num_experts * jnp.sum(f * p, axis=-1))


def z_loss(logits: Array, mask: Array) -> Array:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2."""
    return masked_mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)), mask)


def balance_losses(logits: Array, probs: Array, mask: Array, expert: Array,
                   selected: Array | None = None, segment: int | None = None
                   ) -> dict[str, Array]:
    """The token-choice routers' unweighted aux losses: load balance over
    every selected expert (per `segment` tokens, see load_balance_loss), and
    the router z-loss."""
    return {"load_balance_loss": load_balance_loss(probs, expert, mask, selected, segment),
            "z_loss": z_loss(logits, mask)}


@flax.struct.dataclass
class TokenChoiceInputs:
    """What every token-choice router starts from (see `token_choice_inputs`).

    mask: bool [G, T]; logits / probs: float32 [G, T, E]; probs is a
    distribution over experts (softmax, or the per-expert scores normalised
    to sum to 1: DeepSeek-V3's affinities for its balance loss); scores:
    float32 [G, T, E], what experts are selected by and weighted with (the
    softmax itself, or the per-expert sigmoid / sqrt(softplus) scores);
    capacity: static int, places per expert and group for cfg.k experts per
    token. (The load-balance segment is the kernel's own `segment`.)"""

    mask: Array
    logits: Array
    probs: Array
    scores: Array
    capacity: int = flax.struct.field(pytree_node=False)


SCORE_FNS = ("softmax", "sigmoid", "sqrtsoftplus")
BALANCE_SCOPES = ("group", "sequence", "batch")


def balance_segment(cfg, num_groups: int, group_size: int, sequence_length: int | None) -> int:
    """Tokens per load-balance segment of cfg.balance_scope: a group (T), a
    sequence (`sequence_length`) or everything routed together (G * T).
    The one place the scope is read: `route` passes the result to every
    kernel as `segment`."""
    scope = cfg.balance_scope
    if scope == "batch":
        return num_groups * group_size
    if scope == "sequence":
        if sequence_length is None:
            raise ValueError("balance_scope='sequence' needs the sequence length: "
                             "route(..., sequence_length=L) (MoeLayer passes it)")
        return sequence_length
    return group_size


def token_choice_inputs(logits: Array, mask: Array | None, cfg, train: bool
                        ) -> TokenChoiceInputs:
    """The shared prologue of token-choice routers: checks the inputs, casts
    to float32, scores with cfg.score_fn, and the capacity
    C = ceil(cf * T * k / E) of the train or eval capacity factor."""
    mask = check_logits(logits, mask, cfg.num_choices)
    logits = logits.astype(jnp.float32)
    scores, probs = score(logits, cfg.score_fn)
    return TokenChoiceInputs(mask, logits, probs, scores, compute_capacity(
        logits.shape[1], cfg.num_experts, cfg.k, cfg.capacity_factor_for(train)))


def score(logits: Array, score_fn: str) -> tuple[Array, Array]:
    """(scores, probs), both float32 [..., E], of float32 logits [..., E]:
    the softmax over experts (scores = probs), or per-expert scores
    (DeepSeek-V3's sigmoid, DeepSeek-V4's sqrt(softplus)) with probs their
    normalisation to sum 1."""
    if score_fn == "softmax":
        probs = jax.nn.softmax(logits, axis=-1)
        return probs, probs
    # softplus underflows to 0 for very negative logits, where sqrt's
    # gradient is infinite: the floor keeps the router's gradient finite.
    scores = (jax.nn.sigmoid(logits) if score_fn == "sigmoid" else jnp.sqrt(
        jnp.maximum(jax.nn.softplus(logits), jnp.finfo(jnp.float32).tiny)))
    return scores, scores / jnp.maximum(jnp.sum(scores, axis=-1, keepdims=True), 1e-9)


def assign_slots(expert: Array, request: Array, capacity: int, num_experts: int,
                 priority: Array | None = None) -> tuple[Array, Array]:
    """Token-choice buffer positions: who gets a place at each expert.

    expert: int [G, T, K] the k-th choice of each token; request: bool
    [G, T, K] choices that ask for a place. All first choices claim places
    before any second choice (and so on); within one choice rank, tokens go
    in position order, or in order of descending `priority` [G, T] (V-MoE
    batch-prioritised routing; ties keep position order).
    Returns (slot int32 [G, T, K], kept bool [G, T, K]); kept = request and
    slot < capacity.
    """
    g, t, k = expert.shape
    if priority is None:
        order = jnp.broadcast_to(jnp.arange(t), (g, t))
    else:
        order = jnp.argsort(-priority, axis=1, stable=True)
    take = lambda a: jnp.take_along_axis(a, order[..., None], axis=1)
    onehot = jax.nn.one_hot(take(expert), num_experts, dtype=jnp.int32) * take(request)[..., None]
    # Rank-major flattening makes every first choice precede every second one.
    onehot = onehot.transpose(0, 2, 1, 3).reshape(g, k * t, num_experts)
    before = jnp.cumsum(onehot, axis=1) - onehot
    slot_sorted = jnp.sum(before * onehot, axis=-1).reshape(g, k, t).transpose(0, 2, 1)
    slot = jnp.take_along_axis(slot_sorted, jnp.argsort(order, axis=1)[..., None], axis=1)
    return slot.astype(jnp.int32), request & (slot < capacity)


def experts_per_token(token: Array, valid: Array, num_tokens: int) -> Array:
    """float32 [G, T]: active assignments per token, from a RoutingResult's
    token and valid [G, A]."""
    g = token.shape[0]
    return jnp.zeros((g, num_tokens), jnp.float32).at[jnp.arange(g)[:, None], token].add(
        valid.astype(jnp.float32))


def routing_metrics(probs: Array, mask: Array, token: Array, expert: Array,
                    valid: Array, losses: dict[str, Array], num_experts: int | None = None
                    ) -> dict[str, Array]:
    """Statistics every router reports (see RoutingResult.metrics) over
    `num_experts` real experts (None: probs' last axis; fewer with null
    experts, whose choices are never valid)."""
    g, t = probs.shape[:2]
    e = num_experts or probs.shape[-1]
    per_token = experts_per_token(token, valid, t)
    load = jnp.zeros((e,), jnp.float32).at[expert.reshape(-1)].add(
        valid.reshape(-1).astype(jnp.float32))
    share = load / jnp.maximum(jnp.sum(load), 1.0)
    metrics = {
        "dropped_fraction": masked_mean((per_token == 0).astype(jnp.float32), mask),
        "expert_load": share,
        # Over every group of the call (the global batch under jit): the
        # busiest expert's load over the mean load, minus 1 (0 = balanced),
        # and the fraction of experts given no token.
        "max_violation": jnp.max(share) * e - 1.0,
        "dead_experts": jnp.mean((load == 0).astype(jnp.float32)),
        "experts_per_token": masked_mean(per_token, mask),
        "experts_per_token_hist": jnp.zeros((e + 1,), jnp.float32).at[
            per_token.astype(jnp.int32).reshape(-1)].add(mask.reshape(-1).astype(jnp.float32))
        / jnp.maximum(jnp.sum(mask), 1),
        "router_entropy": masked_mean(entropy(probs), mask),
    }
    metrics.update(losses)
    return metrics


def token_choice_result(inputs: TokenChoiceInputs, expert: Array, weight: Array,
                        request: Array, losses: dict[str, Array], cfg,
                        prioritized: bool | None = None,
                        extra_metrics: dict[str, Array] | None = None) -> RoutingResult:
    """Builds the RoutingResult of a token-choice router.

    inputs: the router's `token_choice_inputs`; expert, weight, request
    [G, T, K] (each token's K choices, their combine weights and which of
    them are wanted; a choice of a null expert, index >= cfg.num_experts,
    must not request); losses: the unweighted aux losses, weighted by
    cfg.loss_weights(). Padding tokens never request. Places are given by
    `assign_slots`, in order of each token's max probability when
    `prioritized` (None: cfg.batch_prioritized; V-MoE), else by position.
    extra_metrics: the router's own statistics, added to the metrics.
    """
    probs, mask, capacity = inputs.probs, inputs.mask, inputs.capacity
    e = cfg.num_experts
    g, t, k = expert.shape
    request = request & mask[..., None]
    # Null experts' choices never request a place: index 0 keeps every
    # dispatch mode's gathers in range.
    expert = jnp.where(expert < e, expert, 0)
    prioritized = cfg.batch_prioritized if prioritized is None else prioritized
    priority = jnp.max(probs, axis=-1) if prioritized else None
    slot, kept = assign_slots(expert, request, capacity, e, priority)
    flat = lambda a: a.reshape(g, t * k)
    token = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :, None], (g, t, k))
    weight = jnp.where(kept, weight, 0.0).astype(jnp.float32)
    return RoutingResult(
        token=flat(token), expert=flat(expert).astype(jnp.int32),
        slot=flat(jnp.where(kept, slot, 0)), weight=flat(weight), valid=flat(kept),
        aux_loss=weighted_sum(losses, cfg.loss_weights()),
        metrics={**routing_metrics(probs, mask, flat(token), flat(expert), flat(kept), losses, e),
                 **(extra_metrics or {})},
        num_experts=e, capacity=capacity)


def weighted_sum(losses: dict[str, Array], weights: dict[str, float]) -> Array:
    """sum_name weights[name] * losses[name] (every loss must have a weight)."""
    return sum((weights[name] * value for name, value in losses.items()),
               jnp.zeros((), jnp.float32))


def check_logits(logits: Array, mask: Array | None, num_experts: int) -> Array:
    """Validates router inputs (`num_experts`: the columns the router
    scores, RouterConfig.num_choices); returns the token mask (all true
    when None)."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be [groups, tokens, experts], got shape {logits.shape}")
    if logits.shape[-1] != num_experts:
        raise ValueError(f"logits have {logits.shape[-1]} experts on the last axis but the "
                         f"router scores {num_experts} (num_experts + num_null_experts)")
    if mask is None:
        return jnp.ones(logits.shape[:2], bool)
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} must equal logits.shape[:2]={logits.shape[:2]}")
    return mask.astype(bool)


def require_rng(rng: Array | None, router: str) -> Array:
    if rng is None:
        raise ValueError(f"router {router!r} samples in training and needs rng; got rng=None")
    return rng
