"""MOESART (Ibrahim et al. 2023): a k-sparse sampled approximation of the
dense softmax mixture, with a trimmed-lasso regulariser.

Source: the paper and the authors' gate `SampleKSoftmaxUnbiasedWithTrimmedLassoGate`
(the public MoEBERT fork their experiments used; its runs set
biasness='small-random', replace=False).

Training, for each token with logits o [E] and p = softmax(o):
  1. draw k distinct experts S from p, in sequence without replacement
     (Gumbel-top-k: top-k of o + Gumbel noise, the same distribution);
  2. combine weights = softmax over S of *adjusted* logits a_i, built so the
     sparse mixture has small bias against the dense one sum_e p_e f_e:
       'small_random' (the authors' runs): one j in S, drawn uniformly,
         keeps a_j = o_j; every other i in S gets a_i = o_i - log((k-1) p_i)
         = logsumexp(o) - log(k-1). So w_j = p_j / (1 + p_j) and each other
         sampled expert has (1 - w_j) / (k-1).
       'zero': a_i = o_i - log(k p_i) for every i in S: w_i = 1/k. The
         weights carry no gradient; the router learns through the
         regulariser only.
Evaluation: the k most probable experts with the 'zero' adjustment (1/k).
Regulariser: trimmed lasso, mean over tokens of sum_{e not in top-k} p_e
(the mass outside the token's top k), weighted by `trimmed_lasso_weight`;
the authors use no load-balance loss, nor does moejax here (the router
z-loss is still added when z_loss_weight > 0; set it to 0 for the paper's
setting).

Variants kept for comparison (not MOESART's estimator; both bias the
mixture toward the most probable sampled expert):
  'renormalized': w_i = p_i / sum_{S} p (moejax's estimator before it
    followed the authors' gate);
  'raw': w_i = p_i.
`sampling='with_replacement'`: k independent draws from Categorical(p);
a repeated expert counts once per draw (the authors' `replace=True`: its
adjusted logit gains log(count)), so a token uses 1..k distinct experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    masked_mean,
    require_rng,
    token_choice_inputs,
    token_choice_result,
    z_loss,
)

WEIGHTINGS = ("small_random", "zero", "renormalized", "raw")
SAMPLINGS = ("without_replacement", "with_replacement")


def validate(cfg) -> None:
    if cfg.sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
    if cfg.sample_weighting not in WEIGHTINGS:
        raise ValueError(f"sample_weighting must be one of {WEIGHTINGS}, "
                         f"got {cfg.sample_weighting!r}")


def trimmed_lasso_loss(probs, mask, k: int):
    """Mean over tokens of the probability mass outside each token's top k.

    probs: float [G, T, E]; mask: bool [G, T]."""
    top = jax.lax.top_k(probs, k)[0]
    return masked_mean(1.0 - jnp.sum(top, -1), mask)


def sample_experts(logits, rng, k: int, sampling: str):
    """(expert int [G, T, k], count float [G, T, k], first bool [G, T, k]):
    k draws per token from softmax(logits); `count` is how often each slot's
    expert was drawn and `first` marks its first occurrence (all ones and
    all true without replacement)."""
    if sampling == "without_replacement":
        gumbel = jax.random.gumbel(rng, logits.shape)
        expert = jax.lax.top_k(logits + gumbel, k)[1]
        ones = jnp.ones(expert.shape, jnp.float32)
        return expert, ones, ones > 0
    expert = jax.random.categorical(rng, logits[..., None, :], shape=logits.shape[:2] + (k,))
    same = expert[..., :, None] == expert[..., None, :]  # [G, T, k, k]
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [i, j]: draw j precedes draw i
    return expert, jnp.sum(same, -1).astype(jnp.float32), ~jnp.any(same & earlier, -1)


def adjusted_weights(logits, expert, count, first, weighting: str, rng=None):
    """Combine weights [G, T, k] over the sampled slots (0 on repeats).

    logits: float [G, T, E]; expert/count/first: from `sample_experts` (or
    top-k with count 1). 'small_random' needs `rng` to pick the expert that
    keeps its logit."""
    k = expert.shape[-1]
    o = jnp.take_along_axis(logits, expert, -1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), expert, -1)
    if weighting in ("renormalized", "raw"):
        p = jnp.where(first, jnp.exp(logp), 0.0)
        return p / jnp.sum(p, -1, keepdims=True) if weighting == "renormalized" else p
    if weighting == "zero":
        adjusted = o - jnp.log(k) - logp
    else:  # small_random: one distinct sampled expert, uniformly, keeps o_j
        score = jnp.where(first, jax.random.uniform(rng, first.shape), -1.0)
        keep = jax.nn.one_hot(jnp.argmax(score, -1), k, dtype=bool)
        adjusted = jnp.where(keep, o, o - jnp.log(max(k - 1, 1)) - logp)
    adjusted = jnp.where(first, adjusted + jnp.log(count), -jnp.inf)
    return jax.nn.softmax(adjusted, -1)


def moesart_route(logits, *, mask, rng, cfg, train, bias=None, segment=None) -> RoutingResult:
    """logits: float [G, T, E]; mask: bool [G, T]; k = cfg.k; see the module
    docstring. Capacity is sized for k experts per token. `bias` and
    `segment` are unused (its regulariser is per group)."""
    inputs = token_choice_inputs(logits, mask, cfg, train)
    k = cfg.k
    if train:
        sample_rng, pick_rng = jax.random.split(require_rng(rng, cfg.name))
        expert, count, first = sample_experts(inputs.logits, sample_rng, k, cfg.sampling)
        weight = adjusted_weights(inputs.logits, expert, count, first, cfg.sample_weighting,
                                  pick_rng)
    else:  # the k most probable, with the 'zero' adjustment for MOESART's estimators
        expert = jax.lax.top_k(inputs.logits, k)[1]
        count = jnp.ones(expert.shape, jnp.float32)
        first = count > 0
        weighting = cfg.sample_weighting if cfg.sample_weighting in ("renormalized", "raw") \
            else "zero"
        weight = adjusted_weights(inputs.logits, expert, count, first, weighting)
    losses = {"trimmed_lasso_loss": trimmed_lasso_loss(inputs.probs, inputs.mask, k),
              "z_loss": z_loss(inputs.logits, inputs.mask)}
    return token_choice_result(inputs, expert, weight, first, losses, cfg)
