"""The blocked grouped matmul (MegaBlocks-style), for any backend.

Each expert's rows are padded to a multiple of `block` rows, giving at most
ceil(M / block) + E blocks (a static bound), and every block is multiplied
by its expert's weights in one batched matmul. Extra work is at most
E * (block - 1) padding rows plus the unused blocks of the bound. It is
CPU's grouped matmul: there XLA expands `jax.lax.ragged_dot` into a dense
[M, E] computation (measured 5.5x a dense matmul at E=8, 39x at E=64).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from moejax.dispatch.grouped import Kernel


def block_size_for(num_rows: int, num_experts: int, max_block: int = 256) -> int:
    """The largest power of two <= the mean rows per expert, in [8, max_block].

    Measured on CPU (scripts/bench_moe_layer.py): smaller blocks lose more to
    per-block matmul overhead than they save in padding.
    """
    target = max(8, min(max_block, num_rows // num_experts))
    return 1 << (target.bit_length() - 1)


def block_layout(group_sizes, num_rows: int, block: int):
    """Where each of the M expert-sorted rows goes in the padded block layout.

    Returns (position [M], unique, >= NB * block for rows past
    sum(group_sizes); block_expert [NB]) with NB = ceil(M / block) + E.
    """
    e = group_sizes.shape[0]
    num_blocks = math.ceil(num_rows / block) + e
    padded = (group_sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    group_end = jnp.cumsum(group_sizes)
    group_start = group_end - group_sizes
    row = jnp.arange(num_rows)
    expert = jnp.searchsorted(group_end, row, side="right")  # E past the last group
    safe = jnp.minimum(expert, e - 1)
    position = padded_start[safe] + row - group_start[safe]
    # Unique out-of-range positions for inactive rows, so the scatter can
    # promise unique indices (see buffers.scatter_to_buffers).
    position = jnp.where(expert < e, position, num_blocks * block + row)
    block_expert = jnp.searchsorted(padded_end, jnp.arange(num_blocks) * block, side="right")
    return position, jnp.minimum(block_expert, e - 1)


def _to_blocks(x, position, num_blocks: int, block: int):
    """x [M, k] -> [NB, block, k], padding rows zero."""
    xp = jnp.zeros((num_blocks * block, x.shape[-1]), x.dtype)
    return xp.at[position].set(x, mode="drop", unique_indices=True).reshape(num_blocks, block, -1)


def _from_blocks(yp, position):
    """[NB, block, n] -> [M, n]; rows past the groups read 0."""
    return yp.reshape(-1, yp.shape[-1]).at[position].get(mode="fill", fill_value=0)


@dataclasses.dataclass(frozen=True)
class Blocks(Kernel):
    """block: rows per block; None = block_size_for(M, E)."""

    block: int | None = None

    def _layout(self, num_rows: int, group_sizes):
        block = self.block or block_size_for(num_rows, group_sizes.shape[0])
        position, block_expert = block_layout(group_sizes, num_rows, block)
        return position, block_expert, block

    def gmm(self, x, w, group_sizes, transpose_rhs: bool = False):
        position, block_expert, block = self._layout(x.shape[0], group_sizes)
        xb = _to_blocks(x, position, block_expert.shape[0], block)
        # Transposed weights are contracted in place, never copied transposed.
        spec = "nbm,nkm->nbk" if transpose_rhs else "nbk,nkm->nbm"
        return _from_blocks(jnp.einsum(spec, xb, w[block_expert]), position)

    def gmm_t(self, dy, w, group_sizes):
        return self.gmm(dy, w, group_sizes, transpose_rhs=True)

    def tgmm(self, x, dy, group_sizes):
        position, block_expert, block = self._layout(x.shape[0], group_sizes)
        num_blocks = block_expert.shape[0]
        xb = _to_blocks(x, position, num_blocks, block)
        dyb = _to_blocks(dy, position, num_blocks, block)
        # (Materialising xb^T first, as moejax.matmul does on CPU, measured
        # 20% slower here at E=64.)
        per_block = jnp.einsum("nbk,nbm->nkm", xb, dyb, preferred_element_type=jnp.float32)
        # Padding blocks past the last group hold zeros, whatever expert they name.
        dw = jax.ops.segment_sum(per_block, block_expert, num_segments=group_sizes.shape[0],
                                 indices_are_sorted=True)
        return dw.astype(x.dtype)
