"""Scorers: how tokens become router logits [G, T, E] (always float32)."""
from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np


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


def _murmur(h):
    """murmur3's 32-bit finaliser of uint32 `h`."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_experts(token_ids, num_experts: int, k: int = 1):
    """int32 [..., k]: k distinct fixed experts per token id [...]. k = 1:
    murmur3(id) mod E; k > 1: the k experts e with the largest
    murmur3(id * E + e) (a random ranking of the experts per id)."""
    ids = token_ids.astype(jnp.uint32)
    if k == 1:
        return (_murmur(ids) % jnp.uint32(num_experts)).astype(jnp.int32)[..., None]
    keys = ids[..., None] * jnp.uint32(num_experts) + jnp.arange(num_experts, dtype=jnp.uint32)
    # The top 31 bits as int32: top_k ranks signed values.
    return jax.lax.top_k((_murmur(keys) >> 1).astype(jnp.int32), k)[1]


@functools.lru_cache(maxsize=8)
def load_hash_table(path: str) -> np.ndarray:
    """The token-id -> experts table at `path` (.npy, any etils.epath path)."""
    from etils import epath

    try:
        return np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"hash_table={path!r} cannot be read as a .npy array: {e}") from None


def hash_logits(token_ids, num_experts: int, k: int = 1, table: np.ndarray | None = None):
    """Logits [G, T, E] that split probability evenly over each token id's
    k fixed experts ([G, T] ids; `table` [vocab, k] or None for
    `hash_experts`): 0 there and -1e9 elsewhere (finite, so losses stay
    finite)."""
    experts = (hash_experts(token_ids, num_experts, k) if table is None
               else jnp.asarray(table, jnp.int32)[token_ids])
    chosen = jnp.any(jax.nn.one_hot(experts, num_experts, dtype=bool), axis=-2)
    return jnp.where(chosen, 0.0, -1e9).astype(jnp.float32)
