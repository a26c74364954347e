"""What `dispatch='auto'` and the default grouped matmul run, per backend: the
rule and the measurements it comes from, in one place.

Measured, forward+backward MoeLayer time over a dense FFN of equal active
FLOPs (scripts/bench_moe_layer.py):
- GPU, one H100, bf16, 8 x 2048 tokens, d_model 1024, d_ff 4096 per expert,
  groups of 2048, top-2 with capacity 1.25 (2026-12-05, jax 0.11.2):
      E=8:  dropless (XLA's ragged_dot) 7.77, scatter 1.55, einsum 1.67
      E=64: dropless out of memory (a 16 GiB [rows, E, N] temporary),
            scatter 2.10, einsum 2.27
  The Pallas grouped matmul (mosaic_gpu) is not yet measured on a GPU, so
  'auto' is scatter there, the fastest measured mode.
- TPU: nothing measured; scatter, whose cost is known (capacity buffers, as
  T5X), until a measurement says otherwise.
- CPU (2 cores, f32): the blocked grouped matmul's small per-block matmuls
  ran about 2x slower per row than scatter's per-expert matmuls
  (BLOCKED_ROW_COST), so 'auto' takes dropless only where its padded rows
  cost less than the capacity buffers; never einsum.
Under expert parallelism 'auto' is scatter (dropless has no all-to-all path).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import jax
import jax.numpy as jnp

from moejax.dispatch.blocks import Blocks, block_size_for
from moejax.dispatch.grouped import IMPLEMENTATIONS, Kernel, RaggedDot
from moejax.dispatch.pallas import MEGABLOX, MOSAIC_FORWARD, Megablox, MosaicGpu
from moejax.routing.base import RoutingResult

MODES = ("auto", "einsum", "scatter", "dropless")
BLOCKED_ROW_COST = 2.0
MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)


def check_dispatch(mode: str, grouped_matmul=None) -> None:
    """The one check of a dispatch mode and grouped-matmul kernel name (or
    Kernel instance, or None: the backend's default); MoeConfig, MoeLayer
    and moe_ffn call it."""
    if mode not in MODES:
        raise ValueError(f"dispatch must be one of {MODES}, got {mode!r}")
    if not (grouped_matmul is None or isinstance(grouped_matmul, Kernel)
            or grouped_matmul in IMPLEMENTATIONS):
        raise ValueError(f"grouped_matmul must be one of {IMPLEMENTATIONS} or None, got "
                         f"{grouped_matmul!r}")


def resolve_mode(mode: str, r: RoutingResult, expert_parallel: bool = False,
                 backend: str | None = None) -> str:
    """The concrete mode `auto` stands for (see the module docstring)."""
    check_dispatch(mode)
    if mode != "auto":
        return mode
    if expert_parallel or (backend or jax.default_backend()) != "cpu":
        return "scatter"
    g, a = r.token.shape
    rows = g * a
    dropless_cost = BLOCKED_ROW_COST * (rows + r.num_experts * block_size_for(rows, r.num_experts))
    return "dropless" if dropless_cost < g * r.num_experts * r.capacity else "scatter"


def _is_hopper() -> bool:
    device = jax.devices()[0]
    return device.platform == "gpu" and str(getattr(device, "compute_capability", "")) \
        .startswith("9")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # an ImportError, or a kernel module failing on this jax build
        return False
    return True


# impl -> (what it needs, in words; whether this process has it; the Kernel)
_KERNELS = {
    "blocks": ("any backend", lambda backend: True, Blocks),
    "ragged_dot": ("any backend", lambda backend: True, RaggedDot),
    "megablox": ("a TPU", lambda backend: backend == "tpu" and _importable(MEGABLOX), Megablox),
    "mosaic_gpu": ("an NVIDIA Hopper GPU (compute capability 9.x) and 16-bit inputs",
                   lambda backend: backend == "gpu" and _is_hopper()
                   and _importable(MOSAIC_FORWARD), MosaicGpu),
    "tokamax": ("the tokamax package (jax >= 0.11.1, Python >= 3.12)",
                lambda backend: importlib.util.find_spec("tokamax") is not None,
                lambda: RaggedDot(module="tokamax")),
}


@functools.cache
def available_grouped_matmuls(backend: str | None = None) -> tuple[str, ...]:
    backend = backend or jax.default_backend()
    return tuple(name for name in IMPLEMENTATIONS if _KERNELS[name][1](backend))


def default_grouped_matmul(dtype=jnp.float32, backend: str | None = None) -> str:
    """TPU: megablox (MaxText's default; unmeasured here). Hopper with 16-bit
    inputs: mosaic_gpu. Elsewhere: blocks, never XLA's expanded ragged_dot."""
    available = available_grouped_matmuls(backend)
    if "megablox" in available:
        return "megablox"
    if "mosaic_gpu" in available and jnp.dtype(dtype) in MOSAIC_DTYPES:
        return "mosaic_gpu"
    return "blocks"


def grouped_kernel(impl: str | Kernel | None, dtype=jnp.float32,
                   backend: str | None = None) -> Kernel:
    """The Kernel for `impl` (None: the default here; a Kernel: itself), or a
    one-line ValueError naming it, what it needs and what is available."""
    if isinstance(impl, Kernel):
        return impl
    if impl is None:
        impl = default_grouped_matmul(dtype, backend)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"grouped_matmul must be one of {IMPLEMENTATIONS} or None, got {impl!r}")
    available = available_grouped_matmuls(backend)
    if impl not in available or (impl == "mosaic_gpu" and jnp.dtype(dtype) not in MOSAIC_DTYPES):
        raise ValueError(f"grouped_matmul {impl!r} needs {_KERNELS[impl][0]}; this is "
                         f"{backend or jax.default_backend()} with {jnp.dtype(dtype).name} "
                         f"inputs, where {', '.join(available)} can run")
    return _KERNELS[impl][2]()
