"""Expert parallelism: experts sharded over a mesh axis, tokens moved by all-to-all.

Buffers [E, G, C, d] arrive sharded over groups. Inside `shard_map` one
all-to-all swaps the sharding from groups to experts, each device runs its
E / n experts on every group's tokens, and a second all-to-all swaps back.
The arithmetic per (group, expert, slot) is the single-device arithmetic,
so results match it exactly.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from moejax.ffn import ffn


def expert_parallel_ffn(buffers, params, activations: Sequence[str], *, mesh: Mesh,
                        expert_axis: str = "expert", data_axes: Sequence[str] | None = None,
                        hidden_dropout: Callable | None = None):
    """Runs the expert FFN on buffers [E, G, C, d] with experts sharded over
    `expert_axis`; groups are sharded over the `data_axes` present in the
    mesh (None: 'data'; MoeLayer passes the batch's axes of the active
    logical rules, i.e. the trainer's Layout) and `expert_axis`.
    Expert weights are replicated over other axes.
    `hidden_dropout(h, stream)` is applied to each device's local hidden
    activations, with the device's index over the group axes as `stream`.
    """
    if expert_axis not in mesh.shape:
        raise ValueError(f"expert_axis {expert_axis!r} is not a mesh axis; mesh axes: "
                         f"{tuple(mesh.shape)}")
    data_axes = ("data",) if data_axes is None else data_axes
    group_axes = (*(a for a in data_axes if a in mesh.shape and a != expert_axis), expert_axis)
    n_groups = 1
    for a in group_axes:
        n_groups *= mesh.shape[a]
    e, g = buffers.shape[:2]
    if g % n_groups:
        raise ValueError(f"expert parallelism over mesh axes {group_axes} needs the number of "
                         f"groups ({g}) divisible by {n_groups}")
    if e % mesh.shape[expert_axis]:
        raise ValueError(f"num_experts={e} must be divisible by the '{expert_axis}' mesh axis "
                         f"size {mesh.shape[expert_axis]}")

    def local(buf, p):
        dropout = None
        if hidden_dropout is not None:
            dropout = functools.partial(hidden_dropout, stream=jax.lax.axis_index(group_axes))
        buf = jax.lax.all_to_all(buf, expert_axis, split_axis=0, concat_axis=1, tiled=True)
        out = ffn(buf, p, activations, hidden_dropout=dropout)
        return jax.lax.all_to_all(out, expert_axis, split_axis=1, concat_axis=0, tiled=True)

    groups = P(None, group_axes)
    return jax.shard_map(local, mesh=mesh, in_specs=(groups, P(expert_axis)),
                         out_specs=groups)(buffers, params)
