"""Stand-ins for the Mosaic GPU kernels, for CPU tests of MosaicGpu's padding
and tiling: the signatures of jax's ragged_dot_mgpu.ragged_dot and
transposed_ragged_dot_mgpu.transposed_ragged_dot, the shape constraints
those kernels state (and the stricter ones the wrapper promises), and NaN
where the real kernels leave memory unwritten."""
import jax
import jax.numpy as jnp

CALLS = []  # (kernel, operand shapes, ...) of every trace, for assertions


def _check_tiles(block_m, block_n, block_k, max_concurrent_steps, grid_block_n):
    assert min(block_m, block_n, block_k, max_concurrent_steps, grid_block_n) >= 1


def ragged_dot(lhs, rhs, *, group_sizes, block_m, block_n, block_k, max_concurrent_steps,
               grid_block_n, transpose_rhs=False):
    _check_tiles(block_m, block_n, block_k, max_concurrent_steps, grid_block_n)
    assert lhs.dtype == rhs.dtype, (lhs.dtype, rhs.dtype)
    m, k = lhs.shape
    g, k2, n = rhs.shape
    if transpose_rhs:
        k2, n = n, k2
    assert group_sizes.shape == (g,) and k == k2
    assert k % block_k == 0, f"k={k} not a multiple of block_k={block_k}"
    assert m % block_m == 0, f"m={m} not a multiple of block_m={block_m}"
    assert n % (block_n * grid_block_n) == 0, f"n={n} not a multiple of block_n x grid_block_n"
    CALLS.append(("ragged_dot", lhs.shape, rhs.shape, transpose_rhs))
    w = jnp.swapaxes(rhs, 1, 2) if transpose_rhs else rhs
    out = jax.lax.ragged_dot(lhs, w, group_sizes, preferred_element_type=jnp.float32)
    covered = jnp.arange(m)[:, None] < jnp.sum(group_sizes)
    return jnp.where(covered, out, jnp.nan).astype(lhs.dtype)


def transposed_ragged_dot(lhs, rhs, *, group_sizes, block_m, block_n, block_k,
                          max_concurrent_steps, grid_block_n):
    _check_tiles(block_m, block_n, block_k, max_concurrent_steps, grid_block_n)
    assert lhs.dtype == rhs.dtype, (lhs.dtype, rhs.dtype)
    k, m = lhs.shape
    k2, n = rhs.shape
    assert k == k2
    assert k % block_k == 0, f"k={k} not a multiple of block_k={block_k}"
    assert m % block_m == 0, f"m={m} not a multiple of block_m={block_m}"
    assert n % block_n == 0, f"n={n} not a multiple of block_n={block_n}"
    CALLS.append(("transposed_ragged_dot", lhs.shape, rhs.shape))
    ends = jnp.cumsum(group_sizes)
    row = jnp.arange(k)[:, None]
    member = (row >= (ends - group_sizes)[None]) & (row < ends[None])  # [k, G]
    out = jnp.einsum("kg,km,kn->gmn", member.astype(jnp.float32), lhs.astype(jnp.float32),
                     rhs.astype(jnp.float32))
    return out.astype(lhs.dtype)
