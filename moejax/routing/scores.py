"""Scorers: how tokens become router logits [G, T, E] (always float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_logits(x, kernel, *, jitter_eps: float = 0.0, rng=None, train: bool = False):
    """x [G, T, d] @ kernel [d, E]; in training x is first multiplied by
    U(1 - jitter_eps, 1 + jitter_eps) (Switch jitter)."""
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"router kernel expects d_model={kernel.shape[0]}, inputs have "
                         f"{x.shape[-1]}")
    x = x.astype(jnp.float32)
    if train and jitter_eps > 0:
        if rng is None:
            raise ValueError("jitter_eps > 0 in training needs rng; got rng=None")
        x = x * jax.random.uniform(rng, x.shape, minval=1.0 - jitter_eps, maxval=1.0 + jitter_eps)
    return x @ kernel.astype(jnp.float32)


def _l2_normalize(x, axis):
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + 1e-12)


def cosine_logits(x, projection, expert_embeddings, log_temperature):
    """X-MoE scores: cos(x @ projection, expert embedding) / temperature.

    x [G, T, d]; projection [d, r]; expert_embeddings [r, E] (each column is
    one expert, L2-normalised here); log_temperature [] or [1] (learned, so the
    temperature stays positive).
    """
    h = _l2_normalize(x.astype(jnp.float32) @ projection.astype(jnp.float32), -1)
    w = _l2_normalize(expert_embeddings.astype(jnp.float32), 0)
    return (h @ w) / jnp.exp(log_temperature.astype(jnp.float32))


def hash_experts(token_ids, num_experts: int):
    """Fixed expert per token id: murmur3's 32-bit finaliser, then mod E."""
    h = token_ids.astype(jnp.uint32)
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return (h % jnp.uint32(num_experts)).astype(jnp.int32)


def hash_logits(token_ids, num_experts: int):
    """Logits [G, T, E] that put probability 1 on the hashed expert of each
    token id [G, T]: 0 there and -1e9 elsewhere (finite, so losses stay finite)."""
    onehot = jax.nn.one_hot(hash_experts(token_ids, num_experts), num_experts, dtype=bool)
    return jnp.where(onehot, 0.0, -1e9).astype(jnp.float32)
