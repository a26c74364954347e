"""Expert Choice routing (Zhou et al. 2022), with capped expert choice (EC-CAP).

Expert choice: S = softmax over experts of each token's logits; expert e
takes the C = ceil(capacity_factor * T / E) tokens of its group with the
highest S[:, e]. A token can get 0..E experts.

EC-CAP (Zhou et al. 2022, section 3.3, "expert choice with additional
constraint"): the assignment A [E, T] solves the entropy-regularised linear
program

    max_A <S, A> + lambda H(A)   s.t.  sum_t A[e, t] = C     (each expert's capacity)
                                       sum_e A[e, t] <= b    (b = max_experts_per_token)
                                       0 <= A[e, t] <= 1,

solved, as in the paper, with Dykstra's algorithm (here Bregman/KL
projections onto the three constraint sets in turn, in log space, for
`EC_CAP_ITERATIONS` sweeps); each expert then takes its top-C tokens by A.
The cap is thus part of the choice, and an expert whose best tokens are
taken elsewhere fills its capacity with others. moejax departs from the
paper in one place: the relaxed solution can still give a token more than
b experts after the top-C rounding, so the last step keeps only each
token's b highest-S experts (a hard guarantee that the cap holds; the slots
it frees stay empty, far fewer than when truncating plain expert choice).
lambda = `EC_CAP_ENTROPY` times the spread (standard deviation) of S in the
group; the paper does not state its value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    check_logits,
    compute_capacity,
    routing_metrics,
    weighted_sum,
    z_loss,
)

EC_CAP_ITERATIONS = 200
# lambda in units of the standard deviation of S over the group's real
# tokens, so that near-uniform and peaked routers get equally sharp solutions.
EC_CAP_ENTROPY = 0.1


def validate(cfg) -> None:
    if cfg.capacity_factor is None or cfg.eval_capacity_factor is None:
        raise ValueError("expert_choice needs capacity_factor and eval_capacity_factor > 0; "
                         "None (no capacity) would make every expert take every token")


def capped_assignment(scores, mask, capacity: int, cap: int, entropy: float = EC_CAP_ENTROPY,
                      iterations: int = EC_CAP_ITERATIONS):
    """The EC-CAP linear program's entropic solution A [G, E, T].

    scores: float [G, E, T] (S transposed); mask: bool [G, T] (padding gets
    A = 0). Dykstra's algorithm with KL projections (Bauschke and Lewis
    2000): each of the three sets keeps a correction, applied before its
    projection and updated after it."""
    neg = -1e9
    m = mask[:, None, :]
    count = jnp.maximum(jnp.sum(m, axis=(1, 2), keepdims=True) * scores.shape[1], 1)
    mean = jnp.sum(jnp.where(m, scores, 0.0), axis=(1, 2), keepdims=True) / count
    var = jnp.sum(jnp.where(m, jnp.square(scores - mean), 0.0), axis=(1, 2), keepdims=True) / count
    lam = entropy * jnp.sqrt(var) + 1e-6
    log_a = jnp.where(m, scores / lam, neg)
    real = jnp.sum(mask, axis=-1)[:, None, None]  # an expert cannot take more than the real tokens
    log_c = jnp.log(jnp.minimum(capacity, jnp.maximum(real, 1)).astype(jnp.float32))

    def project(i, log_a):
        if i == 0:  # each expert's row sums to C
            return log_a - (jax.nn.logsumexp(log_a, axis=2, keepdims=True) - log_c)
        if i == 1:  # each token's column sums to at most b
            over = jax.nn.logsumexp(log_a, axis=1, keepdims=True) - jnp.log(float(cap))
            return log_a - jnp.maximum(over, 0.0)
        return jnp.minimum(log_a, 0.0)  # A <= 1

    def sweep(_, carry):
        log_a, corrections = carry
        new = []
        for i, log_q in enumerate(corrections):
            shifted = log_a + log_q
            log_a = jnp.where(mask[:, None, :], project(i, shifted), neg)
            new.append(jnp.where(mask[:, None, :], shifted - log_a, 0.0))
        return log_a, tuple(new)

    zeros = jnp.zeros_like(log_a)
    log_a, _ = jax.lax.fori_loop(0, iterations, sweep, (log_a, (zeros, zeros, zeros)))
    return jnp.where(mask[:, None, :], jnp.exp(log_a), 0.0)


def expert_choice_route(logits, *, mask, rng, cfg, train, bias=None, segment=None
                        ) -> RoutingResult:
    """Each expert takes its top-C tokens of the group (by S[:, e], or with
    cfg.max_experts_per_token = b, by the EC-CAP assignment).

    logits: float [G, T, E]; mask: bool [G, T]. S = softmax over experts;
    C = ceil(capacity_factor * T / E) (at most T); ties go to the earlier
    token. Padding tokens are never chosen (an expert of a mostly padded
    group gets fewer than C tokens). Combine weight = S[t, e]. Balanced by
    construction: the only aux loss is the z-loss. `rng`, `bias` and
    `segment` are unused (deterministic, no balance loss).
    """
    mask = check_logits(logits, mask, cfg.num_experts)
    cf = cfg.capacity_factor_for(train)
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    g, t, e = probs.shape
    capacity = compute_capacity(t, e, 1, cf)
    scores = probs.transpose(0, 2, 1)  # [G, E, T]
    cap = cfg.max_experts_per_token
    if cap is not None and cap < e:
        rank_by = capped_assignment(jax.lax.stop_gradient(scores), mask, capacity, cap)
    else:
        rank_by = scores
    rank_by = jnp.where(mask[:, None, :], rank_by, -1.0)
    top, token = jax.lax.top_k(rank_by, capacity)  # [G, E, C]
    valid = top >= 0
    gi = jnp.arange(g)[:, None, None]
    ei = jnp.arange(e)[None, :, None]
    if cap is not None:  # hard guarantee: each token keeps its `cap` highest-S experts
        chosen = jnp.zeros((g, t, e), bool).at[gi, token, ei].max(valid)
        ranked = jnp.argsort(-jnp.where(chosen, probs, -1.0), axis=-1, stable=True)
        rank = jnp.argsort(ranked, axis=-1)
        valid = valid & (rank < cap)[gi, token, ei]
    weight = jnp.where(valid, probs[gi, token, ei], 0.0)
    flat = lambda a: a.reshape(g, e * capacity)
    expert = jnp.broadcast_to(ei, (g, e, capacity)).astype(jnp.int32)
    slot = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (g, e, capacity))
    losses = {"z_loss": z_loss(logits, mask)}
    return RoutingResult(
        token=flat(token).astype(jnp.int32), expert=flat(expert), slot=flat(slot),
        weight=flat(weight), valid=flat(valid), aux_loss=weighted_sum(losses, cfg.loss_weights()),
        metrics=routing_metrics(probs, mask, flat(token), flat(expert), flat(valid), losses),
        num_experts=e, capacity=capacity)
