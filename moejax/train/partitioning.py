"""Device mesh and logical-axis partitioning, as in T5X.

Every param and activation carries logical axis names (batch, length, embed,
mlp, heads, kv, joined_kv, vocab, expert, relpos_buckets and the router's
own `ROUTER_AXES`, which are replicated); the rules below map them onto the
mesh axes ('data', 'model', 'expert'):
  data    batch (data parallelism)
  model   mlp / heads / joined_kv / vocab (tensor parallelism)
  expert  experts (expert parallelism); the batch is sharded over
          ('data', 'expert') so expert devices also split the data, as T5X MoE does.
  (none)  layers: the block axis of scanned layers (model.scan_layers).
With `expert_axis='data'` experts are sharded over the data axis instead
and the 'expert' mesh axis should have size 1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from moejax.layers import ROUTER_AXES

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
            ("relpos_buckets", None), ("expert", expert_axis), ("layers", None),
            *((axis, None) for axis in ROUTER_AXES))


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


@dataclasses.dataclass(frozen=True)
class Layout:
    """The one owner of where arrays live, as t5x/contrib/moe/partitioning.py
    is for T5X MoE: the mesh, the logical rules, the batch's sharding and
    the data-parallel size the batch must divide by.

    With expert_axis='expert' the batch spans ('data', 'expert'): the
    devices that hold different experts also split the data, so expert
    parallelism costs no data parallelism. With expert_axis='data' experts
    are sharded over 'data' and the batch spans 'data' alone.
    """

    mesh: Mesh
    expert_axis: str = "expert"

    def __post_init__(self):
        logical_rules(self.expert_axis)  # validates expert_axis

    @classmethod
    def create(cls, data: int = 1, model: int = 1, expert: int = 1, expert_axis: str = "expert",
               devices=None) -> Layout:
        """The layout of a ('data', 'model', 'expert') mesh of these sizes
        (one may be -1: the devices left over)."""
        return cls(make_mesh({"data": data, "model": model, "expert": expert}, devices),
                   expert_axis)

    @property
    def rules(self) -> tuple[tuple[str, object], ...]:
        return logical_rules(self.expert_axis)

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """Mesh axes the batch dimension is split over."""
        return ("data", "expert") if self.expert_axis == "expert" else ("data",)

    @property
    def data_parallel(self) -> int:
        """Ways the batch is split: the product of the batch axes' sizes."""
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    @property
    def batch_sharding(self) -> NamedSharding:
        """[batch, ...] arrays: rows over the batch axes, the rest replicated."""
        return NamedSharding(self.mesh, nn.logical_to_mesh_axes(("batch", None), self.rules))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def param_shardings(self, boxed_tree):
        """NamedShardings of a tree of `nn.Partitioned` params (see `shardings`)."""
        return shardings(boxed_tree, self.mesh, self.rules)

    def check_rows(self, rows: int, what: str) -> None:
        """Raises a ValueError explaining the layout unless `rows` (described
        by `what`) splits evenly over the data-parallel devices."""
        if rows % self.data_parallel:
            axes = " x ".join(f"{a} ({self.mesh.shape[a]})" for a in self.batch_axes)
            raise ValueError(f"{what} = {rows} rows is not divisible by the data-parallel size "
                             f"{self.data_parallel}: the batch spans mesh axes {axes} of mesh "
                             f"{dict(self.mesh.shape)}")

    def context(self):
        """`sharding_context` of this mesh and rules."""
        return sharding_context(self.mesh, self.rules)
