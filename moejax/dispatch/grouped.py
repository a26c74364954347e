"""The grouped matmul of dropless dispatch, one differentiable op over several kernels.

`grouped_matmul(x, w, group_sizes, impl)`:
  x [M, K] rows sorted by expert, w [E, K, N], group_sizes [E] int32 -> [M, N],
  rows [start_e, start_e + group_sizes[e]) multiplied by w[e]; rows past
  sum(group_sizes) (inactive assignments) give 0.

Its VJP is written here once, for every kernel, so that no backend ever
differentiates through a dense expansion:
  dx = dy @ w[e]^T per group          (the same grouped matmul, transposed weights)
  dw[e] = x_e^T @ dy_e                (a transposed grouped matmul, tgmm)

Kernels ('impl'), each a `Kernel` with gmm / gmm_t / tgmm:
  blocks      MegaBlocks-style padded blocks in one batched matmul; every backend
              (moejax.dispatch.blocks).
  ragged_dot  jax.lax.ragged_dot / ragged_dot_general. XLA:TPU runs it natively;
              XLA:CPU and XLA:GPU expand it into a masked dense product (E times
              the FLOPs and an [M, E, N] temporary: 7.8x a dense FFN at E=8 and
              out of memory at E=64 on an H100), so nothing picks it by default.
  megablox    the TPU Pallas kernels gmm / tgmm MaxText uses (moejax.dispatch.pallas).
  mosaic_gpu  jax's Hopper Pallas Mosaic GPU kernels (moejax.dispatch.pallas).
  tokamax     tokamax.ragged_dot / ragged_dot_general, where tokamax is installed.
Which kernel runs by default is decided in moejax.dispatch.choice.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("blocks", "ragged_dot", "megablox", "mosaic_gpu", "tokamax")


class Kernel:
    """One grouped-matmul implementation. Subclasses are frozen dataclasses
    (hashable: they are static arguments of the custom VJP).

    gmm(x [M, K], w [E, K, N], gs [E]) -> [M, N]
    gmm_t(dy [M, N], w [E, K, N], gs) -> [M, K]   (dy @ w[e]^T per group)
    tgmm(x [M, K], dy [M, N], gs) -> [E, K, N]    (x_e^T @ dy_e per group)
    gmm and gmm_t give 0 in rows past sum(gs); tgmm ignores those rows.
    """

    def gmm(self, x, w, group_sizes):
        raise NotImplementedError

    def gmm_t(self, dy, w, group_sizes):
        return self.gmm(dy, jnp.swapaxes(w, 1, 2), group_sizes)

    def tgmm(self, x, dy, group_sizes):
        raise NotImplementedError


def _ragged_tgmm_numbers():
    """x [M, K] . dy [M, N] contracting the ragged M -> [E, K, N]."""
    return jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([0], [0]), ([], [])),
        lhs_ragged_dimensions=[0], rhs_group_dimensions=[])


@dataclasses.dataclass(frozen=True)
class RaggedDot(Kernel):
    """`ragged_dot` / `ragged_dot_general` from `module` (jax.lax or tokamax)."""

    module: str = "jax.lax"

    def _lib(self):
        return importlib.import_module(self.module)

    def gmm(self, x, w, group_sizes):
        return self._lib().ragged_dot(x, w, group_sizes)

    def tgmm(self, x, dy, group_sizes):
        return self._lib().ragged_dot_general(x, dy, group_sizes, _ragged_tgmm_numbers())


def row_mask(num_rows: int, group_sizes):
    """[M, 1] bool: rows inside some group (the first sum(group_sizes))."""
    return (jnp.arange(num_rows) < jnp.sum(group_sizes))[:, None]


def pad_to(x, axis: int, multiple: int):
    """Zero-pads `axis` of x up to a multiple of `multiple`."""
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped(x, w, group_sizes, kernel: Kernel):
    return kernel.gmm(x, w, group_sizes)


def _grouped_fwd(x, w, group_sizes, kernel):
    return kernel.gmm(x, w, group_sizes), (x, w, group_sizes)


def _grouped_bwd(kernel, residuals, dy):
    x, w, group_sizes = residuals
    dx = kernel.gmm_t(dy, w, group_sizes).astype(x.dtype)
    dw = kernel.tgmm(x, dy, group_sizes).astype(w.dtype)
    # group_sizes is an integer input: its cotangent is float0 zeros.
    return dx, dw, jnp.zeros(group_sizes.shape, jax.dtypes.float0)


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def grouped_matmul(x, w, group_sizes, kernel: Kernel):
    """x [M, K] (rows sorted by expert) @ w [E, K, N] per group -> [M, N].

    Both operands are cast to their common dtype (the kernels take one
    dtype); group_sizes [E] is cast to int32. Rows past sum(group_sizes) are 0.
    """
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"grouped matmul takes x [M, K] and w [E, K, N], got {x.shape} and "
                         f"{w.shape}")
    if group_sizes.shape != (w.shape[0],):
        raise ValueError(f"group_sizes must have shape ({w.shape[0]},), got {group_sizes.shape}")
    dtype = jnp.result_type(x, w)
    return _grouped(x.astype(dtype), w.astype(dtype), group_sizes.astype(jnp.int32), kernel)

