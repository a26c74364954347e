"""Pallas grouped-matmul kernels jax ships, behind the `Kernel` interface.

Both pad the operands to the kernels' tile multiples, slice the result
back, and zero the rows past sum(group_sizes), which the kernels leave
unwritten (uninitialised memory on the device, NaN in interpret mode).

- Megablox: `jax.experimental.pallas.ops.tpu.megablox` gmm / tgmm, the TPU
  kernels MaxText uses. They need M to be a multiple of the row tile (K and
  N may be ragged); `interpret=True` runs them on CPU (tests).
- MosaicGpu: `jax.experimental.pallas.ops.gpu.ragged_dot_mgpu` (forward;
  `transpose_rhs` gives the input gradient without materialising w^T) and
  `transposed_ragged_dot_mgpu` (weight gradient), Hopper (sm_90) only, 16-bit
  inputs. They need the contracted axis to be a multiple of block_k and the
  output's columns of block_n (tgmm: rows of block_m too). `forward` /
  `transposed` substitute other kernels with the same signatures: tests run
  the padding and tiling on CPU with a reference kernel that checks the
  same constraints.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax.numpy as jnp

from moejax.dispatch.grouped import Kernel, pad_to, row_mask

MEGABLOX = "jax.experimental.pallas.ops.tpu.megablox.gmm"
MOSAIC_FORWARD = "jax.experimental.pallas.ops.gpu.ragged_dot_mgpu"
MOSAIC_TRANSPOSED = "jax.experimental.pallas.ops.gpu.transposed_ragged_dot_mgpu"

# MaxText's default megablox tiles (rows, contracted, output columns). Not
# measured here (no TPU yet); clipped to the problem below.
MEGABLOX_TILES = (512, 1024, 1024)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Megablox(Kernel):
    """tiling: (tm, tk, tn); None = MEGABLOX_TILES clipped to the shape."""

    tiling: tuple[int, int, int] | None = None
    interpret: bool = False

    def _tiles(self, m: int, k: int, n: int):
        if self.tiling is not None:
            return tuple(self.tiling)
        tm, tk, tn = MEGABLOX_TILES
        # TPU tiles are multiples of (8, 128); no larger than the padded problem.
        return min(tm, _round_up(m, 8)), min(tk, _round_up(k, 128)), min(tn, _round_up(n, 128))

    def _call(self, op, *args, tiling, **kw):
        kernels = importlib.import_module(MEGABLOX)
        return getattr(kernels, op)(*args, tiling=tiling, interpret=self.interpret, **kw)

    def gmm(self, x, w, group_sizes, transpose_rhs: bool = False):
        m, n = x.shape[0], w.shape[1 if transpose_rhs else 2]
        tiling = self._tiles(m, x.shape[1], n)
        y = self._call("gmm", pad_to(x, 0, tiling[0]), w, group_sizes, tiling=tiling,
                       preferred_element_type=x.dtype, transpose_rhs=transpose_rhs)
        return jnp.where(row_mask(m, group_sizes), y[:m], 0)

    def gmm_t(self, dy, w, group_sizes):
        return self.gmm(dy, w, group_sizes, transpose_rhs=True)

    def tgmm(self, x, dy, group_sizes):
        # Megablox's tgmm names the ragged token axis m: lhs [k, m] @ rhs [m, n].
        tiling = self._tiles(x.shape[0], x.shape[1], dy.shape[1])
        return self._call("tgmm", pad_to(x, 0, tiling[0]).T, pad_to(dy, 0, tiling[0]),
                          group_sizes, tiling=tiling, preferred_element_type=x.dtype,
                          num_actual_groups=group_sizes.shape[0])


@dataclasses.dataclass(frozen=True)
class GpuTiles:
    """The Mosaic GPU kernels' tile parameters (their argument names)."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    max_concurrent_steps: int = 4
    grid_block_n: int = 1


# Tiles by the number of rows M (the smallest bound that fits). Taken from
# the space jax's own kernel tuners search (block_m, block_n in 64..192,
# block_k 64, 2..6 stages); not yet measured on a GPU: the GPU check
# (scripts/gpu_check.sh) sweeps candidates at the benchmark shapes.
GPU_TILES = ((1024, GpuTiles(block_m=64)), (None, GpuTiles()))


def gpu_tiles(num_rows: int) -> GpuTiles:
    return next(t for bound, t in GPU_TILES if bound is None or num_rows <= bound)


@dataclasses.dataclass(frozen=True)
class MosaicGpu(Kernel):
    """tiles: None = gpu_tiles(M); forward / transposed: kernels with the
    signatures of jax's ragged_dot / transposed_ragged_dot (None: jax's)."""

    tiles: GpuTiles | None = None
    forward: Callable | None = None
    transposed: Callable | None = None

    def _kernel(self, which: str):
        if which == "forward":
            return self.forward or importlib.import_module(MOSAIC_FORWARD).ragged_dot
        return (self.transposed
                or importlib.import_module(MOSAIC_TRANSPOSED).transposed_ragged_dot)

    def _tiles(self, num_rows: int) -> dict:
        return dataclasses.asdict(self.tiles or gpu_tiles(num_rows))

    def gmm(self, x, w, group_sizes, transpose_rhs: bool = False):
        t = self._tiles(x.shape[0])
        m, n = x.shape[0], w.shape[1 if transpose_rhs else 2]
        # w [E, K, N] (or [E, N, K] transposed): pad K to block_k, N to whole column blocks.
        k_axis, n_axis = (2, 1) if transpose_rhs else (1, 2)
        wp = pad_to(pad_to(w, k_axis, t["block_k"]), n_axis, t["block_n"] * t["grid_block_n"])
        xp = pad_to(pad_to(x, 1, t["block_k"]), 0, t["block_m"])
        y = self._kernel("forward")(xp, wp, group_sizes=group_sizes, transpose_rhs=transpose_rhs,
                                    **t)
        return jnp.where(row_mask(m, group_sizes), y[:m, :n], 0)

    def gmm_t(self, dy, w, group_sizes):
        return self.gmm(dy, w, group_sizes, transpose_rhs=True)

    def tgmm(self, x, dy, group_sizes):
        t = self._tiles(x.shape[0])
        k, n = x.shape[1], dy.shape[1]
        # The kernel names the ragged token axis k: lhs [k, m], rhs [k, n] -> [E, m, n].
        xp = pad_to(pad_to(x, 0, t["block_k"]), 1, t["block_m"])
        dyp = pad_to(pad_to(dy, 0, t["block_k"]), 1, t["block_n"] * t["grid_block_n"])
        dw = self._kernel("transposed")(xp, dyp, group_sizes=group_sizes, **t)
        return dw[:, :k, :n]
