"""Expert parallelism on 8 fake CPU devices equals the single-device layer."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from moejax.dispatch import expert_parallel_ffn
from moejax.layers import MOE_COLLECTION, ROUTER_STATE, MoeLayer
from moejax.layers.moe import expert_dropout
from moejax.routing import RouterConfig


def run(layer, params, x, mask, state=None, ids=None):
    """(output, gradients, router_state after the training step)."""
    state = state or {}

    def loss(params, x):
        y, new = layer.apply({"params": params, **state}, x, mask=mask, token_ids=ids,
                             deterministic=False,
                             rngs={"router": jax.random.PRNGKey(9)},
                             mutable=[MOE_COLLECTION, ROUTER_STATE])
        return jnp.sum(jnp.sin(y)), (y, new.get(ROUTER_STATE, {}))
    (_, (y, new)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, x)
    return y, grads, new


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4), (4, 2)])
@pytest.mark.parametrize("name,mode,kw", [
    ("top_k", "auto", {}), ("gshard_top2", "einsum", {}), ("expert_choice", "scatter", {}),
    # The 2026 routing rules: null experts, quantile balancing (its bias solved
    # from the global batch), ReLU routing (its L1 coefficient steered by it).
    ("top_k", "auto", dict(k=2, num_null_experts=3)),
    ("top_k", "einsum", dict(k=2, score_fn="sigmoid", quantile_balancing=True)),
    ("relu", "scatter", {}), ("hash", "auto", dict(k=2))])
def test_sharded_layer_equals_single_device(mesh_shape, name, mode, kw):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), ("data", "expert"))
    cfg = RouterConfig(name=name, num_experts=8, capacity_factor=1.0, **kw)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 12))
    mask = jnp.arange(8)[None, :] < jnp.arange(16)[:, None] % 8 + 1  # varied padding
    ids = jax.random.randint(jax.random.PRNGKey(2), (16, 8), 1, 500)
    single = MoeLayer(cfg, d_ff=20, dispatch=mode)
    variables = nn.unbox(single.init(jax.random.PRNGKey(1), x, token_ids=ids))
    params, state = variables["params"], {k: v for k, v in variables.items()
                                          if k == ROUTER_STATE}
    y0, g0, s0 = run(single, params, x, mask, state, ids)
    sharded = MoeLayer(cfg, d_ff=20, dispatch=mode, mesh=mesh, expert_axis="expert")
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "expert"))))
    ps = {k: jax.device_put(v, NamedSharding(mesh, P("expert") if v.ndim == 3 else P()))
          for k, v in params.items()}
    y1, g1, s1 = run(sharded, ps, xs, mask, state, ids)
    assert len(y1.sharding.device_set) == 8
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert bool(state) == bool(s0)  # stateful routers moved their state, equally
    for a, b, before in zip(jax.tree.leaves(s1), jax.tree.leaves(s0), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.any(np.asarray(a) != np.asarray(before))


def test_all_to_all_is_in_the_compiled_program():
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "expert"))
    buffers = jnp.ones((8, 8, 3, 4))
    params = {"wi": jnp.ones((8, 4, 6)), "wo": jnp.ones((8, 6, 4))}
    hlo = jax.jit(lambda b, p: expert_parallel_ffn(b, p, ("relu",), mesh=mesh)).lower(
        buffers, params).compile().as_text()
    assert "all-to-all" in hlo


def test_expert_dropout_masks_differ_between_devices():
    # Identity experts on all-ones buffers: the output is the dropout mask / keep.
    # Each of the 8 devices holds one expert's [8, 3, 4] block after the
    # all-to-all; with one key for all of them every expert's mask was the same.
    mesh = Mesh(np.array(jax.devices()).reshape(1, 8), ("data", "expert"))
    eye = jnp.broadcast_to(jnp.eye(4), (8, 4, 4))
    dropout = functools.partial(expert_dropout, jax.random.PRNGKey(0), 0.5)
    out = jax.jit(lambda b: expert_parallel_ffn(b, {"wi": eye, "wo": eye}, ("linear",), mesh=mesh,
                                                hidden_dropout=dropout))(jnp.ones((8, 8, 3, 4)))
    masks = np.asarray(out).reshape(8, -1)
    assert set(np.unique(masks)) == {0.0, 2.0}
    assert len({m.tobytes() for m in masks}) == 8


def test_expert_parallel_errors():
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "expert"))
    params = {"wi": jnp.ones((8, 4, 6)), "wo": jnp.ones((8, 6, 4))}
    with pytest.raises(ValueError, match=r"number of groups \(4\) divisible by 8"):
        expert_parallel_ffn(jnp.ones((8, 4, 3, 4)), params, ("relu",), mesh=mesh)
    with pytest.raises(ValueError,
                       match="num_experts=6 must be divisible by the 'expert' mesh axis size 4"):
        expert_parallel_ffn(jnp.ones((6, 8, 3, 4)), params, ("relu",), mesh=mesh)
    with pytest.raises(ValueError, match="expert_axis 'experts' is not a mesh axis"):
        expert_parallel_ffn(jnp.ones((8, 8, 3, 4)), params, ("relu",), mesh=mesh,
                            expert_axis="experts")
