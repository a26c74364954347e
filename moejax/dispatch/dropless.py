"""Dropless dispatch: sort assignments by expert, grouped matmul, unsort.

Compute is proportional to the active assignments, with no capacity buffers.
The grouped matmul has two implementations:
- 'ragged_dot': `jax.lax.ragged_dot`, native on GPU/TPU. On CPU XLA lowers
  it to a dense [M, E] computation (measured 5.5x a dense matmul at E=8,
  39x at E=64), so CPU uses:
- 'blocks' (MegaBlocks-style): each expert's rows are padded to a multiple
  of `block` rows, giving at most ceil(M / block) + E blocks (a static
  bound), and each block is multiplied by its expert's weights in one
  batched matmul. Extra work is at most E * (block - 1) padding rows.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from moejax.routing.base import RoutingResult

GROUPED_MATMULS = ("ragged_dot", "blocks")


def block_size_for(num_rows: int, num_experts: int, max_block: int = 256) -> int:
    """The largest power of two <= the mean rows per expert, in [8, max_block].

    Measured on CPU (scripts/bench_moe_layer.py): smaller blocks lose more to
    per-block matmul overhead than they save in padding.
    """
    target = max(8, min(max_block, num_rows // num_experts))
    return 1 << (target.bit_length() - 1)


def sort_by_expert(r: RoutingResult, num_tokens: int):
    """Flattens all groups' assignments and sorts them by expert.

    Returns (token [M] flat token index into G*T, expert [M] with E for
    inactive assignments (sorted last), weight [M], group_sizes [E]).
    """
    e = r.num_experts
    flat_expert = jnp.where(r.valid, r.expert, e).reshape(-1)
    flat_token = (jnp.arange(r.token.shape[0])[:, None] * num_tokens + r.token).reshape(-1)
    order = jnp.argsort(flat_expert, stable=True)
    group_sizes = jnp.bincount(flat_expert, length=e + 1)[:e].astype(jnp.int32)
    return flat_token[order], flat_expert[order], r.weight.reshape(-1)[order], group_sizes


def ragged_matmul(x, w, group_sizes):
    """x [M, k] (rows sorted by expert) @ w [E, k, n] per group -> [M, n]."""
    return jax.lax.ragged_dot(x, w, group_sizes)


def block_layout(sorted_expert, group_sizes, block: int):
    """Where each sorted row goes in the padded block layout.

    Returns (position [M], unique, >= NB * block for inactive rows;
    block_expert [NB]) with NB = ceil(M / block) + E.
    """
    m = sorted_expert.shape[0]
    e = group_sizes.shape[0]
    num_blocks = math.ceil(m / block) + e
    padded = (group_sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    group_start = jnp.cumsum(group_sizes) - group_sizes
    safe = jnp.minimum(sorted_expert, e - 1)
    position = padded_start[safe] + jnp.arange(m) - group_start[safe]
    # Unique out-of-range positions for inactive rows: see scatter_to_buffers.
    position = jnp.where(sorted_expert < e, position, num_blocks * block + jnp.arange(m))
    block_expert = jnp.searchsorted(padded_end, jnp.arange(num_blocks) * block, side="right")
    return position, jnp.minimum(block_expert, e - 1)


def blocked_matmul(x, w, layout, block: int):
    """x [M, k] @ w [E, k, n] per expert, computed block by block."""
    position, block_expert = layout
    num_blocks = block_expert.shape[0]
    xp = jnp.zeros((num_blocks * block, x.shape[-1]), x.dtype).at[position].set(
        x, mode="drop", unique_indices=True)
    yp = jnp.einsum("nbk,nkm->nbm", xp.reshape(num_blocks, block, -1), w[block_expert])
    return yp.reshape(num_blocks * block, -1).at[position].get(mode="fill", fill_value=0)


def dropless_matmul(sorted_expert, group_sizes, impl: str, block: int | None = None):
    """The grouped `matmul(x, w)` for `moejax.ffn.ffn` on expert-sorted rows."""
    if impl == "ragged_dot":
        return functools.partial(ragged_matmul, group_sizes=group_sizes)
    if impl == "blocks":
        block = block or block_size_for(sorted_expert.shape[0], group_sizes.shape[0])
        layout = block_layout(sorted_expert, group_sizes, block)
        return functools.partial(blocked_matmul, layout=layout, block=block)
    raise ValueError(f"grouped matmul must be one of {GROUPED_MATMULS}, got {impl!r}")
