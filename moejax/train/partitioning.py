"""Device mesh and logical-axis partitioning, as in T5X.

Every param and activation carries logical axis names (batch, length, embed,
mlp, heads, kv, joined_kv, vocab, expert, relpos_buckets, router_proj,
unmodeled); the
rules below map them onto the mesh axes ('data', 'model', 'expert'):
  data    batch (data parallelism)
  model   mlp / heads / joined_kv / vocab (tensor parallelism)
  expert  experts (expert parallelism); the batch is sharded over
          ('data', 'expert') so expert devices also split the data, as T5X MoE does.
With `expert_axis='data'` experts are sharded over the data axis instead
and the 'expert' mesh axis should have size 1.
"""
from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "model", "expert")


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices=None) -> Mesh:
    """Mesh with axes ('data', 'model', 'expert'). `shape` gives each axis's
    size as a dict or a 3-sequence; one size may be -1 to use the devices
    left over. The product must equal the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(sizes)} must give 3 sizes for {MESH_AXES}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError("mesh sizes must be >= 1, with at most one -1; got "
                         f"{dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are not "
                             f"divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {len(devices)} are available")
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def logical_rules(expert_axis: str = "expert") -> tuple[tuple[str, object], ...]:
    """Logical axis -> mesh axis table (see module docstring)."""
    if expert_axis not in ("expert", "data"):
        raise ValueError(f"expert_axis must be 'expert' or 'data', got {expert_axis!r}")
    batch = ("data", "expert") if expert_axis == "expert" else "data"
    return (("batch", batch), ("vocab", "model"), ("embed", None), ("mlp", "model"),
            ("heads", "model"), ("kv", None), ("joined_kv", "model"), ("length", None),
            ("relpos_buckets", None), ("expert", expert_axis), ("router_proj", None),
            ("unmodeled", None))


def shardings(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of `nn.Partitioned` values (e.g. the output
    of `jax.eval_shape(model.init, ...)`); unannotated leaves are replicated."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """Makes `mesh` and `rules` current, so the logical constraints inside
    the model become sharding constraints when traced under jit."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
