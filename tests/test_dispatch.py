"""Dispatch modes against each other and against a loop-over-assignments reference."""
import flax.linen as nn
import gmm_kernels
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from moejax.dispatch import moe_ffn
from moejax.dispatch.pallas import GpuTiles, Megablox, MosaicGpu
from moejax.layers import MoeLayer
from moejax.routing import ROUTERS, RouterConfig, route

B, L, D, F, E = 4, 12, 16, 24, 8
# Mosaic GPU's padding and tiling with stand-in kernels (tests/gmm_kernels.py).
MOSAIC = MosaicGpu(tiles=GpuTiles(block_m=16, block_n=16, block_k=16, max_concurrent_steps=2),
                   forward=gmm_kernels.ragged_dot, transposed=gmm_kernels.transposed_ragged_dot)
MODES = [("einsum", None), ("scatter", None), ("dropless", "blocks"), ("dropless", "ragged_dot"),
         ("dropless", MOSAIC)]
# Interpret mode costs seconds a call: a few routers only.
MEGABLOX = ("dropless", Megablox(tiling=(16, 128, 128), interpret=True))
MEGABLOX_ROUTERS = ("top_k", "expert_choice", "top_p")


def layer_and_vars(name, mode, matmul=None, cf=None, **kw):
    cfg = RouterConfig(name=name, num_experts=E, capacity_factor=cf, eval_capacity_factor=cf, **kw)
    layer = MoeLayer(cfg, d_ff=F, dispatch=mode, grouped_matmul=matmul, group_size=24)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    ids = jax.random.randint(jax.random.PRNGKey(1), (B, L), 0, 1000)
    variables = nn.unbox(layer.init(jax.random.PRNGKey(2), x, token_ids=ids))
    variables.pop("moe")
    return layer, variables, x, ids


def output_and_grads(layer, variables, x, ids, train):
    def loss(params, x):
        y, _ = layer.apply({**variables, "params": params}, x, token_ids=ids,
                           deterministic=not train, rngs={"router": jax.random.PRNGKey(3)},
                           mutable=["moe"])
        return jnp.sum(jnp.sin(y) * jnp.arange(D)), y
    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, y), grads = grad_fn(variables["params"], x)
    return y, grads


# No drops for every router (expert choice always has a capacity: 4.0 lets
# each of 8 experts see half the group), then with drops for some.
@pytest.mark.parametrize("name,cf,kw",
                         [(n, 4.0 if n == "expert_choice" else None, {}) for n in sorted(ROUTERS)]
                         + [(n, 1.0, {}) for n in ("top_k", "gshard_top2", "top_p",
                                                   "expert_choice")]
                         + [("top_k", 1.0, dict(k=2, score_fn="sqrtsoftplus")),
                            ("top_k", 1.0, dict(k=2, num_null_experts=3)),
                            ("top_k", None, dict(k=2, score_fn="sigmoid",
                                                 quantile_balancing=True)),
                            ("relu", 1.0, {}), ("hash", 1.0, dict(k=2))])
def test_all_modes_same_output_and_gradients(name, cf, kw):
    results = {}
    for mode, matmul in MODES + [MEGABLOX] * (name in MEGABLOX_ROUTERS and not kw):
        layer, variables, x, ids = layer_and_vars(name, mode, matmul, cf, **kw)
        results[(mode, matmul)] = output_and_grads(layer, variables, x, ids, train=True)
    y0, g0 = results[MODES[0]]
    assert float(jnp.max(jnp.abs(y0))) > 0
    for key, (y, g) in results.items():
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5, err_msg=str(key))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(key))


@pytest.mark.parametrize("name,kw", [("top_k", dict(k=2)), ("expert_choice", {}), ("top_p", {}),
                                     ("gshard_top2", {})])
def test_layer_output_matches_loop_reference(name, kw):
    cf = 1.0  # with drops
    layer, variables, x, ids = layer_and_vars(name, "auto", cf=cf, **kw)
    y, state = layer.apply(variables, x, token_ids=ids, mutable=["moe"])
    params = variables["params"]
    xg = np.asarray(x).reshape(-1, 24, D)
    logits = xg @ np.asarray(params["router_kernel"])
    cfg = layer.router
    r = route(cfg, jnp.asarray(logits), train=False)
    kept = {}
    for g, a in zip(*np.nonzero(np.asarray(r.valid))):
        kept[(g, int(r.token[g, a]), int(r.expert[g, a]))] = float(r.weight[g, a])
    expert = ref.gated_gelu_expert({k: np.asarray(v) for k, v in params.items()})
    want = ref.moe_output(xg, kept, expert)
    np.testing.assert_allclose(np.asarray(y).reshape(xg.shape), want, rtol=2e-4, atol=2e-5)
    # Tokens without an expert output exactly zero (the residual carries them).
    routed = {(g, t) for (g, t, _) in kept}
    for g in range(xg.shape[0]):
        for t in range(24):
            if (g, t) not in routed:
                assert not np.any(np.asarray(y).reshape(xg.shape)[g, t])


def test_moe_ffn_rejects_mismatched_groups():
    layer, variables, x, ids = layer_and_vars("top_k", "scatter", k=2)
    r = route(layer.router, jnp.zeros((3, 24, E)))
    with pytest.raises(ValueError, match="routing has 3 groups, inputs have 2"):
        moe_ffn(x.reshape(2, 24, D), r, variables["params"], activations=("gelu", "linear"))


@pytest.mark.parametrize("mode", ["einsum", "scatter", "dropless"])
def test_each_phase_has_a_named_scope(mode):
    """Profiler traces name the phases route, dispatch, expert_ffn and
    combine (scopes in the lowered program's op names)."""
    layer = MoeLayer(RouterConfig("top_k", num_experts=4, k=2), d_ff=8, activations=("relu",),
                     dispatch=mode)
    x = jnp.ones((2, 6, 5))
    params = layer.init(jax.random.PRNGKey(0), x)
    text = jax.jit(lambda p, v: layer.apply(p, v)).lower(params, x).as_text(debug_info=True)
    for name in ("route", "dispatch", "expert_ffn", "combine"):
        assert f"MoeLayer/{name}/" in text, name
