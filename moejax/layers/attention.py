"""T5 attention: relative position biases and multi-head attention with a decode cache.

Two ways to compute softmax(q k^T + bias) v, same result:
  'einsum' the explicit product (T5X's); the only one with dropout on the
           attention weights, and the one cached decoding uses.
  'xla' / 'cudnn'  `jax.nn.dot_product_attention` with that implementation
           (cuDNN's fused flash attention on NVIDIA GPUs).
  'auto'   'cudnn' on a GPU with 16-bit activations, head_dim a multiple of 8
           up to 128 and no attention dropout; elsewhere 'einsum'. A shape
           cuDNN refuses when traced falls back to 'einsum', logged once.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moejax.matmul import matmul

# Additive bias for masked attention logits (float32 softmax).
NEG_INF = -1e10
IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")
FUSED = ("xla", "cudnn")
log = logging.getLogger(__name__)


class AttentionBias(NamedTuple):
    """What a stack gives its attention layers. einsum: `bias` holds the
    position bias and the masks added together once per stack, `mask` is
    None. Fused: `bias` is the position bias alone (or None), `mask` the
    boolean mask [B, 1, Lq, Lk] (True = may attend)."""

    bias: jax.Array | None
    mask: jax.Array | None = None


def resolve_attention(impl: str, *, dtype, head_dim: int, dropout_rate: float,
                      backend: str | None = None) -> str:
    """The implementation `impl` stands for (see the module docstring)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {impl!r}")
    backend = backend or jax.default_backend()
    if impl == "cudnn" and backend != "gpu":
        raise ValueError(f"attention 'cudnn' needs an NVIDIA GPU; this is {backend}, where "
                         f"'einsum' and 'xla' run ('auto' picks)")
    if impl != "auto":
        return impl
    fits = (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
            and head_dim <= 128 and dropout_rate == 0)
    return "cudnn" if fits and backend == "gpu" else "einsum"


def additive_mask(mask):
    """bool mask (True = may attend) -> float32 0 / NEG_INF to add to the logits."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def stack_bias(position_bias, mask, impl: str) -> AttentionBias:
    """position_bias [B | 1, H, Lq, Lk] float32 or None, mask [B, 1, Lq, Lk]
    bool -> the AttentionBias for implementation `impl`."""
    if impl in FUSED:
        return AttentionBias(position_bias, mask)
    additive = additive_mask(mask)
    return AttentionBias(additive if position_bias is None else position_bias + additive)


@functools.cache
def _log_fallback_once(reason: str):
    log.warning("cuDNN attention cannot take this call (%s); running the einsum attention",
                reason)

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


@functools.lru_cache(maxsize=64)
def relative_position_buckets(max_distance_seen: int, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """Bucket of every relative position r = key - query in
    [-max_distance_seen, max_distance_seen], indexed by r + max_distance_seen.

    T5's scheme: half the buckets (per direction when bidirectional) hold
    exact small distances, the rest log-spaced distances up to
    `max_distance`. Computed once in float32 numpy, as Mesh TensorFlow and HF do.
    """
    r = np.arange(-max_distance_seen, max_distance_seen + 1, dtype=np.int64)
    bucket = np.zeros_like(r)
    if bidirectional:
        num_buckets //= 2
        bucket += (r > 0) * num_buckets
        n = np.abs(r)
    else:
        n = np.maximum(-r, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(n.astype(np.float32) / np.float32(max_exact))
                             / np.float32(math.log(max_distance / max_exact))
                             * np.float32(num_buckets - max_exact))
    large = np.minimum(np.where(n < max_exact, 0, large).astype(np.int64), num_buckets - 1)
    return (bucket + np.where(n < max_exact, n, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each relative-position bucket, shared by the
    layers of one stack (as T5X/flaxformer do)."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    embedding_init: Callable = nn.initializers.normal(1.0)

    @nn.compact
    def __call__(self, q_pos, k_pos):
        """q_pos [B | 1, Lq], k_pos [B | 1, Lk] int positions -> [B | 1, H, Lq, Lk] float32."""
        table = self.param("rel_embedding", nn.with_logical_partitioning(
            self.embedding_init, ("heads", "relpos_buckets")), (self.num_heads, self.num_buckets),
            jnp.float32)
        seen = max(q_pos.shape[-1], k_pos.shape[-1])
        buckets = jnp.asarray(relative_position_buckets(
            seen, self.bidirectional, self.num_buckets, self.max_distance))
        rel = jnp.clip(k_pos[:, None, :] - q_pos[:, :, None], -seen, seen)
        return jnp.transpose(table[:, buckets[rel + seen]], (1, 0, 2, 3))


class MultiHeadAttention(nn.Module):
    """T5 attention: no biases, no 1/sqrt(d) score scaling (folded into the
    query init), float32 softmax, dropout on the attention weights.

    Decode mode (one new token per call) keeps a cache in the 'cache'
    collection: self-attention writes its key/value at `decode_position` into
    a [B, max_length, H, D] buffer; cross-attention computes the encoder's
    keys/values on the first call and reuses them.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    # 'einsum', 'xla' or 'cudnn' (resolved by the stack: resolve_attention).
    implementation: str = "einsum"

    def _kernel(self, name, shape, axes, scale=1.0):
        init = self.kernel_init if scale == 1.0 else (
            lambda *a: self.kernel_init(*a) * scale)
        w = self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)
        return jnp.asarray(w, self.dtype)

    def _project(self, x, name, scale=1.0):
        b, l, d = x.shape
        w = self._kernel(name, (d, self.num_heads * self.head_dim), ("embed", "joined_kv"), scale)
        y = matmul(jnp.asarray(x, self.dtype), w)
        return nn.with_logical_constraint(y.reshape(b, l, self.num_heads, self.head_dim),
                                          ("batch", "length", "heads", "kv"))

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, bias: AttentionBias, *, deterministic: bool = True,
                 decode: str | None = None, decode_position=None, max_length: int | None = None):
        """inputs_q [B, Lq, d], inputs_kv [B, Lk, d], bias: AttentionBias for
        [B | 1, H | 1, Lq, Lk] logits (stack_bias). decode: None, 'self' or
        'cross'. Returns [B, Lq, d]."""
        q = self._project(inputs_q, "query", scale=self.head_dim ** -0.5)
        if decode == "cross" and self.has_variable("cache", "cross_key"):
            k = self.get_variable("cache", "cross_key")
            v = self.get_variable("cache", "cross_value")
        else:
            k = self._project(inputs_kv, "key")
            v = self._project(inputs_kv, "value")
            if decode == "cross":
                self.put_variable("cache", "cross_key", k)
                self.put_variable("cache", "cross_value", v)
        if decode == "self":
            b, _, h, dh = k.shape
            shape, at = (b, max_length, h, dh), (0, decode_position, 0, 0)
            cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
            cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, at)
            cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, at)
            k, v = cached_k.value, cached_v.value

        dropout = not deterministic and self.dropout_rate > 0
        out = None
        if self.implementation in FUSED and not dropout:
            out = self._fused(q, k, v, bias)
        if out is None:
            out = self._einsum(q, k, v, bias, dropout)
        b, l = out.shape[:2]
        wo = self._kernel("out", (self.num_heads * self.head_dim, inputs_q.shape[-1]),
                          ("joined_kv", "embed"))
        out = matmul(out.reshape(b, l, -1), wo)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _einsum(self, q, k, v, bias: AttentionBias, dropout: bool):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if bias.bias is not None:
            logits = logits + bias.bias
        if bias.mask is not None:
            logits = logits + additive_mask(bias.mask)
        weights = jax.nn.softmax(logits, axis=-1)
        if dropout:
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
        return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)

    def _fused(self, q, k, v, bias: AttentionBias):
        """jax.nn.dot_product_attention, or None where cuDNN refuses the call.
        T5 folds 1/sqrt(d) into the query init, hence scale 1."""
        position = bias.bias
        if position is not None and self.implementation == "cudnn":
            position = position.astype(q.dtype)  # cuDNN takes a bias of the inputs' dtype
        try:
            return jax.nn.dot_product_attention(q, k, v, bias=position, mask=bias.mask, scale=1.0,
                                                implementation=self.implementation)
        except (ValueError, NotImplementedError, RuntimeError) as e:
            if self.implementation != "cudnn":
                raise
            _log_fallback_once(str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            return None
