"""Dropless dispatch: sort assignments by expert, grouped matmul, unsort.

Compute is proportional to the active assignments, with no capacity
buffers. The grouped matmul is `moejax.dispatch.grouped.grouped_matmul`
with a kernel from `moejax.dispatch.choice`.
"""
from __future__ import annotations

import jax.numpy as jnp

from moejax.dispatch.grouped import Kernel, grouped_matmul
from moejax.routing.base import RoutingResult


def sort_by_expert(r: RoutingResult, num_tokens: int):
    """Flattens all groups' assignments and sorts them by expert.

    Returns (token [M] flat token index into G*T, expert [M] with E for
    inactive assignments (sorted last), weight [M], group_sizes [E] int32).
    """
    e = r.num_experts
    flat_expert = jnp.where(r.valid, r.expert, e).reshape(-1)
    flat_token = (jnp.arange(r.token.shape[0])[:, None] * num_tokens + r.token).reshape(-1)
    order = jnp.argsort(flat_expert, stable=True)
    group_sizes = jnp.bincount(flat_expert, length=e + 1)[:e].astype(jnp.int32)
    return flat_token[order], flat_expert[order], r.weight.reshape(-1)[order], group_sizes


def dropless_matmul(group_sizes, kernel: Kernel):
    """The `matmul(x, w)` for `moejax.ffn.ffn` on expert-sorted rows."""
    return lambda x, w: grouped_matmul(x, w, group_sizes, kernel)
