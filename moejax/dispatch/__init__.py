"""Dispatch and combine: route tokens to experts, run them, and mix the outputs.

`moe_ffn(x, routing, params, ...)` is the one entry point. Modes:
  'einsum'   one-hot dispatch/combine tensors (T5X); O(T*E*C*d) per group.
  'scatter'  index scatter/gather into capacity buffers; O((A + E*C)*d).
  'dropless' sort by expert + grouped matmul (moejax.dispatch.grouped; the
             kernel by `grouped_matmul`, None = the backend's default);
             O(active assignments * d).
  'auto'     the fastest mode measured on this backend (moejax.dispatch.choice:
             scatter on GPU and TPU and under expert parallelism; on CPU
             scatter or dropless by a row-count model; never einsum).
All modes give the same output for the same RoutingResult: capacity drops
are decided by the router, not by the dispatch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from moejax.dispatch import buffers as buf
from moejax.dispatch.choice import (
    MODES,
    available_grouped_matmuls,
    check_dispatch,
    default_grouped_matmul,
    grouped_kernel,
    resolve_mode,
)
from moejax.dispatch.dropless import dropless_matmul, sort_by_expert
from moejax.dispatch.expert_parallel import expert_parallel_ffn
from moejax.dispatch.grouped import IMPLEMENTATIONS as GROUPED_MATMULS
from moejax.ffn import ffn
from moejax.routing.base import RoutingResult


def moe_ffn(x, routing: RoutingResult, params, *, activations: Sequence[str], mode: str = "auto",
            grouped_matmul: str | None = None, mesh: Mesh | None = None,
            expert_axis: str | None = None, data_axes: Sequence[str] | None = None,
            hidden_dropout: Callable | None = None):
    """Mixture of expert FFNs.

    x: [G, T, d]; routing: RoutingResult for the same [G, T]; params: expert
    weights {'wi' | 'wi_0', 'wi_1', ...: [E, d, f], 'wo': [E, f, d]} in the
    compute dtype. With `mesh` and `expert_axis`, experts run sharded over
    that axis (buffer modes only). `hidden_dropout(h, stream=0)` acts on
    the experts' hidden activations (expert parallelism passes each device's
    index as `stream`, see `moejax.layers.moe.expert_dropout`). Returns
    [G, T, d]; tokens without an active expert get 0 (the residual connection
    carries them).
    """
    g, t, _ = x.shape
    if routing.token.shape[0] != g:
        raise ValueError(f"routing has {routing.token.shape[0]} groups, inputs have {g}")
    expert_parallel = mesh is not None and expert_axis is not None
    mode = resolve_mode(mode, routing, expert_parallel)
    # One named scope per phase (dispatch, expert_ffn, combine), so profiler
    # traces read like MaxText's; the layer adds 'route' around the router.
    if mode == "dropless":
        if expert_parallel:
            raise ValueError("dispatch mode 'dropless' does not support expert parallelism; "
                             "use 'scatter', 'einsum' or 'auto'")
        flat_x = x.reshape(g * t, -1)
        with jax.named_scope("dispatch"):
            token, expert, weight, group_sizes = sort_by_expert(routing, t)
            rows = flat_x[token]
        with jax.named_scope("expert_ffn"):
            kernel = grouped_kernel(grouped_matmul, jnp.result_type(x, *params.values()))
            matmul = dropless_matmul(group_sizes, kernel)
            out = ffn(rows, params, activations, matmul, hidden_dropout)
        with jax.named_scope("combine"):
            out = jnp.where((expert < routing.num_experts)[:, None],
                            out * weight[:, None].astype(out.dtype), 0)
            return jnp.zeros_like(flat_x).at[token].add(out).reshape(x.shape)

    with jax.named_scope("dispatch"):
        if mode == "einsum":
            dispatch, combine = buf.one_hot_tensors(routing, t, x.dtype)
            buffers = buf.einsum_to_buffers(x, dispatch)
        else:
            buffers = buf.scatter_to_buffers(x, routing)
    with jax.named_scope("expert_ffn"):
        if expert_parallel:
            out = expert_parallel_ffn(buffers, params, activations, mesh=mesh,
                                      expert_axis=expert_axis, data_axes=data_axes,
                                      hidden_dropout=hidden_dropout)
        else:
            out = ffn(buffers, params, activations, hidden_dropout=hidden_dropout)
    with jax.named_scope("combine"):
        if mode == "einsum":
            return buf.einsum_from_buffers(out, combine)
        return buf.scatter_from_buffers(out, routing, t)


__all__ = ["GROUPED_MATMULS", "MODES", "available_grouped_matmuls", "check_dispatch",
           "default_grouped_matmul", "expert_parallel_ffn", "grouped_kernel", "moe_ffn",
           "resolve_mode"]
