"""Dispatch modes against each other and against a loop-over-assignments reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from moejax.dispatch import moe_ffn, resolve_mode
from moejax.dispatch.dropless import block_layout, blocked_matmul, block_size_for, ragged_matmul
from moejax.layers import MoeLayer
from moejax.routing import ROUTERS, RouterConfig, route

B, L, D, F, E = 4, 12, 16, 24, 8
MODES = [("einsum", None), ("scatter", None), ("dropless", "blocks"), ("dropless", "ragged_dot")]


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
@pytest.mark.parametrize("name,cf",
                         [(n, 4.0 if n == "expert_choice" else None) for n in sorted(ROUTERS)]
                         + [(n, 1.0) for n in ("top_k", "gshard_top2", "top_p", "expert_choice")])
def test_all_modes_same_output_and_gradients(name, cf):
    results = {}
    for mode, matmul in MODES:
        layer, variables, x, ids = layer_and_vars(name, mode, matmul, cf)
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


@pytest.mark.parametrize("sizes", [[5, 0, 17, 1, 0, 9], [0, 0, 0, 32, 0, 0], [3, 3, 3, 3, 3, 3]])
@pytest.mark.parametrize("block", [1, 4, 8])
def test_grouped_matmuls_against_numpy(sizes, block):
    rng = np.random.default_rng(0)
    m = sum(sizes) + 4  # 4 inactive rows at the end
    x = rng.normal(size=(m, 5)).astype(np.float32)
    w = rng.normal(size=(len(sizes), 5, 3)).astype(np.float32)
    expert = np.concatenate([np.full(n, e) for e, n in enumerate(sizes)] + [np.full(4, len(sizes))])
    want = np.zeros((m, 3), np.float32)
    for i, e in enumerate(expert):
        if e < len(sizes):
            want[i] = x[i] @ w[e]
    gs = jnp.asarray(sizes, jnp.int32)
    layout = block_layout(jnp.asarray(expert), gs, block)
    position, num_slots = np.asarray(layout[0]), layout[1].shape[0] * block
    assert len(set(position.tolist())) == m  # the scatter promises unique indices
    assert (position[:sum(sizes)] < num_slots).all() and (position[sum(sizes):] >= num_slots).all()
    got = blocked_matmul(jnp.asarray(x), jnp.asarray(w), layout, block)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    active = sum(sizes)
    got = ragged_matmul(jnp.asarray(x), jnp.asarray(w), gs)
    np.testing.assert_allclose(np.asarray(got)[:active], want[:active], rtol=1e-5, atol=1e-5)


def test_block_size_is_power_of_two_in_range():
    for rows, experts in [(16, 8), (4096, 8), (4096, 64), (10**6, 2)]:
        b = block_size_for(rows, experts)
        assert b & (b - 1) == 0 and 8 <= b <= 256 and (b <= rows // experts or b == 8)


def test_auto_mode_never_uses_einsum_and_picks_the_cheaper_path():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 1024, 64))

    def result(name, cf, **kw):
        cfg = RouterConfig(name=name, num_experts=64, eval_capacity_factor=cf, **kw)
        return route(cfg, logits, train=False)
    assert resolve_mode("auto", result("top_k", None, k=2), backend="cpu") == "dropless"
    assert resolve_mode("auto", result("top_k", 1.25, k=2), backend="cpu") == "scatter"
    assert resolve_mode("auto", result("top_p", 1.0), backend="cpu") == "scatter"
    assert resolve_mode("auto", result("expert_choice", 2.0), backend="cpu") == "scatter"
    assert resolve_mode("auto", result("top_k", 1.25, k=2), backend="gpu") == "dropless"
    assert resolve_mode("auto", result("top_k", None, k=2), expert_parallel=True) == "scatter"
    with pytest.raises(ValueError, match="dispatch mode must be one of"):
        resolve_mode("dense", result("top_k", None, k=2))


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
