"""MoeLayer: a thin Flax wrapper around a pure router and `moe_ffn`."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from moejax.dispatch import check_dispatch, moe_ffn
from moejax.dispatch.grouped import Kernel
from moejax.ffn import check_activations, input_kernel_names
from moejax.layers.ffn import MlpBlock
from moejax.layers.names import EXPERT_AXIS, MOE_COLLECTION, ROUTER_STATE, TRACE_COLLECTION
from moejax.layers.scorers import get_scorer
from moejax.routing import RouterConfig, RoutingResult, route
from moejax.routing import state as router_state

expert_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,))
# Switch Transformers: a reduced router init scale keeps early routing stable.
default_router_init = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")


def expert_dropout(rng, keep: float, h, stream=0):
    """Inverted dropout on the experts' hidden activations h. `stream` gives
    each expert-parallel device its own mask: their local arrays have equal
    shapes, so one key would drop the same positions on every device."""
    mask = jax.random.bernoulli(jax.random.fold_in(rng, stream), keep, h.shape)
    return jnp.where(mask, h / keep, 0).astype(h.dtype)


def batch_mesh_axes() -> tuple[str, ...] | None:
    """The mesh axes the active logical rules (the trainer's Layout, see
    moejax.train.partitioning) split the batch over; None outside any rules
    context. Expert parallelism shards its groups over them."""
    for name, axes in nn.get_logical_axis_rules():
        if name == "batch":
            return (axes,) if isinstance(axes, str) else tuple(axes or ())
    return None


class MoeLayer(nn.Module):
    """Router + E expert FFNs (T5.1.1 gated or plain, no bias).

    Inputs x [batch, length, embed] are routed in groups of `group_size`
    tokens (None: one group per sequence; fewer tokens than that: one group),
    so capacity and expert choice act per group. `mask` [batch, length]
    marks real tokens (padding is never routed); `token_ids` [batch,
    length] are needed by the hash router.
    Sows `aux_loss` and `metrics` into the 'moe' collection. A router with
    state (a selection bias: bias_update_rate or quantile_balancing; the
    relu router's L1 coefficient; see moejax.routing.state) keeps it in
    the 'router_state' collection and, in training when that collection is
    mutable, moves it by `moejax.routing.state.update_state` after routing.
    Needs a 'router' rng in training for routers that sample or jitter, and
    a 'dropout' rng when `dropout_rate` > 0 (dropout on the experts' hidden
    activations in training: Switch's "expert dropout").
    `dispatch` is a moejax.dispatch mode; `grouped_matmul` the kernel of
    'dropless' dispatch: a name from moejax.dispatch.GROUPED_MATMULS, a
    moejax.dispatch.grouped.Kernel (your own, or one with options such as
    tiles), or None for the backend's default.
    `num_shared_experts` > 0 adds always-active experts (DeepSeekMoE) of
    `shared_d_ff` hidden units each (None: d_ff) to the routed output. They
    are one dense FFN `shared_experts` of num_shared_experts * shared_d_ff
    hidden units (the sum of the separate experts, as DeepSeek builds
    them); under expert parallelism it is replicated over the expert axis
    and its hidden units sharded like a dense FFN's ('mlp' over 'model').
    """

    router: RouterConfig
    d_ff: int
    activations: Sequence[str] = ("gelu", "linear")
    group_size: int | None = None
    dispatch: str = "auto"
    grouped_matmul: str | Kernel | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = expert_kernel_init
    router_init: Callable = default_router_init
    mesh: Mesh | None = None
    expert_axis: str | None = None
    dropout_rate: float = 0.0
    num_shared_experts: int = 0
    shared_d_ff: int | None = None

    def router_logits(self, x, token_ids, rng, train):
        """Router logits [G, T, E] float32 from the scorer the router's
        registry entry names (capture with
        `capture_intermediates=lambda m, name: name == "router_logits"`)."""
        return get_scorer(self.router.spec.scorer)(self, x, token_ids, rng, train)

    def _expert_params(self, d):
        e = self.router.num_experts
        shapes = {name: ((e, d, self.d_ff), (EXPERT_AXIS, "embed", "mlp"))
                  for name in input_kernel_names(self.activations)}
        shapes["wo"] = ((e, self.d_ff, d), (EXPERT_AXIS, "mlp", "embed"))
        init = functools.partial(nn.with_logical_partitioning, self.kernel_init)
        return {name: jnp.asarray(self.param(name, init(axes), shape, self.param_dtype), self.dtype)
                for name, (shape, axes) in shapes.items()}

    @nn.compact
    def __call__(self, x, *, mask=None, token_ids=None, deterministic: bool = True):
        activations = check_activations(self.activations)
        check_dispatch(self.dispatch, self.grouped_matmul)
        b, l, d = x.shape
        if mask is not None and mask.shape != (b, l):
            raise ValueError(f"mask shape {mask.shape} must be (batch, length)=({b}, {l})")
        # Fewer tokens than a group (the trainer's one-token init, a short
        # batch) form a single group.
        t = min(self.group_size or l, b * l)
        if (b * l) % t:
            where = "/".join(self.scope.path) if self.scope and self.scope.path else "MoeLayer"
            raise ValueError(f"group_size={t} of {where} must divide its batch*length={b * l} "
                             f"tokens")
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        xg = jnp.asarray(x, self.dtype).reshape(b * l // t, t, d)
        maskg = None if mask is None else mask.reshape(xg.shape[:2])
        ids = None if token_ids is None else token_ids.reshape(xg.shape[:2])
        train = not deterministic
        rng = self.make_rng("router") if train and self.has_rng("router") else None
        jitter_rng, route_rng = jax.random.split(rng) if rng is not None else (None, None)
        kept = {name: self.variable(ROUTER_STATE, name, jnp.full, shape, value, jnp.float32)
                for name, (shape, value) in router_state.state_shapes(self.router).items()}
        state = {name: v.value for name, v in kept.items()}
        with jax.named_scope("route"):
            logits = self.router_logits(xg, ids, jitter_rng, train)
            result: RoutingResult = route(self.router, logits, mask=maskg, rng=route_rng,
                                          train=train, bias=router_state.selection_bias(state),
                                          sequence_length=l)
            aux_loss = result.aux_loss + router_state.state_loss(state, result)
        if (kept and train and self.is_mutable_collection(ROUTER_STATE)
                and not self.is_initializing()):
            for name, value in router_state.update_state(state, self.router, logits, maskg,
                                                         result).items():
                kept[name].value = value
        hidden_dropout = None
        if train and self.dropout_rate > 0:
            hidden_dropout = functools.partial(expert_dropout, self.make_rng("dropout"),
                                               1.0 - self.dropout_rate)
        y = moe_ffn(xg, result, self._expert_params(d), activations=activations,
                    mode=self.dispatch, grouped_matmul=self.grouped_matmul, mesh=self.mesh,
                    expert_axis=self.expert_axis, data_axes=batch_mesh_axes(),
                    hidden_dropout=hidden_dropout)
        y = y.reshape(b, l, d)
        if self.num_shared_experts:
            with jax.named_scope("shared_experts"):
                width = self.num_shared_experts * (self.shared_d_ff or self.d_ff)
                y = y + MlpBlock(width, activations, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="shared_experts")(x)
        if self.is_mutable_collection(TRACE_COLLECTION) and not self.is_initializing():
            # Shape: [batch, length, E], each token's combine weight per
            # expert (0 = not routed there): what routing traces record.
            g = result.token.shape[0]
            dense = jnp.zeros((g, xg.shape[1], self.router.num_experts), jnp.float32).at[
                jnp.arange(g)[:, None], result.token, result.expert].add(
                jnp.where(result.valid, result.weight, 0.0))
            self.sow(TRACE_COLLECTION, "trace", {"weights": dense.reshape(b, l, -1)})
        self.sow(MOE_COLLECTION, "aux_loss", aux_loss)
        self.sow(MOE_COLLECTION, "metrics", {**result.metrics,
                                             **router_state.state_metrics(state)})
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
