"""MoeLayer: trainability of routers, gradients, dtypes, axis names, errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref

from moejax.layers import (
    FIXED_ROUTER_AXIS,
    MOE_COLLECTION,
    ROUTER_AXES,
    ROUTER_STATE,
    MlpBlock,
    MoeLayer,
)
from moejax.routing import ROUTERS, RouterConfig
from moejax.train import optim

B, L, D, F, E = 2, 8, 16, 32, 4


def make(name, dtype=jnp.float32, **kw):
    cfg = RouterConfig(name=name, num_experts=E, capacity_factor=2.0, jitter_eps=0.01, **kw)
    layer = MoeLayer(cfg, d_ff=F, dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, L, D), dtype)
    ids = jax.random.randint(jax.random.PRNGKey(1), (B, L), 0, 500)
    variables = nn.unbox(layer.init(jax.random.PRNGKey(2), x, token_ids=ids))
    variables.pop(MOE_COLLECTION)
    return layer, variables, x, ids


def train(name, steps=5):
    layer, variables, x, ids = make(name)
    target = jax.random.normal(jax.random.PRNGKey(4), x.shape)
    boxed = layer.init(jax.random.PRNGKey(2), x, token_ids=ids)["params"]
    # AdamW with weight decay would shrink any parameter it is given.
    opt = optim.freeze(optax.adamw(1e-2, weight_decay=0.1), optim.frozen_labels(boxed))
    params = variables["params"]
    state = opt.init(params)

    @jax.jit
    def step(params, state, rng):
        def loss(p):
            y, moe = layer.apply({**variables, "params": p}, x, token_ids=ids, deterministic=False,
                                 rngs={"router": rng}, mutable=[MOE_COLLECTION])
            aux = sum(jax.tree.leaves(moe[MOE_COLLECTION]["aux_loss"]))
            return jnp.mean((y - target) ** 2) + aux
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    new = params
    for i in range(steps):
        new, state = step(new, state, jax.random.PRNGKey(i))
    return variables, new


def test_frozen_router_weights_never_move_but_experts_do():
    variables, new = train("frozen")
    np.testing.assert_array_equal(new["router_kernel"], variables["params"]["router_kernel"])
    for name in ("wi_0", "wi_1", "wo"):
        assert not np.allclose(new[name], variables["params"][name])


def test_learned_router_weights_change():
    variables, new = train("switch")
    assert not np.allclose(new["router_kernel"], variables["params"]["router_kernel"])


def test_frozen_router_routes_like_switch_with_the_same_weights():
    frozen, fv, x, ids = make("frozen")
    switch, sv, _, _ = make("switch")
    sv["params"].update(fv["params"])
    np.testing.assert_allclose(frozen.apply(fv, x), switch.apply(sv, x), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_router_has_finite_gradients_under_jit(name, dtype):
    layer, variables, x, ids = make(name, dtype)

    def loss(params, x):
        y, moe = layer.apply({**variables, "params": params}, x, token_ids=ids, deterministic=False,
                             rngs={"router": jax.random.PRNGKey(5)}, mutable=[MOE_COLLECTION])
        assert y.dtype == dtype
        aux = moe[MOE_COLLECTION]["aux_loss"][0]
        return jnp.sum(y.astype(jnp.float32) ** 2) + aux
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    assert float(jnp.sum(jnp.abs(grads[1].astype(jnp.float32)))) > 0
    router_grads = [v for k, v in grads[0].items() if k.startswith("router")]
    if ROUTERS[name].scorer != "hash":  # a frozen router's are dropped by the optimizer
        assert router_grads and any(float(jnp.sum(jnp.abs(g))) > 0 for g in router_grads)
    else:
        assert not router_grads


def test_router_maths_is_float32_for_bf16_inputs():
    layer, variables, x, ids = make("top_k", jnp.bfloat16, k=2)
    _, moe = layer.apply(variables, x, mutable=[MOE_COLLECTION])
    for v in jax.tree.leaves(moe[MOE_COLLECTION]):
        assert v.dtype == jnp.float32


def test_every_moe_param_carries_a_router_or_expert_axis():
    """Whatever the scorer, each param of a MoE layer is an expert kernel
    (axis 'expert') or a router param (a ROUTER_AXES axis, FIXED_ROUTER_AXIS
    exactly when the router never trains), so freezing by axis reaches all
    of a router and none of its experts."""
    for name in ROUTERS:
        layer, _, x, ids = make(name)
        boxed = layer.init(jax.random.PRNGKey(2), x, token_ids=ids)["params"]
        for key, leaf in boxed.items():
            names = set(leaf.names)
            is_router = bool(names & set(ROUTER_AXES))
            assert is_router != ("expert" in names), (name, key, leaf.names)
            assert is_router == key.startswith("router_"), (name, key)
            assert (FIXED_ROUTER_AXIS in names) == (is_router and not ROUTERS[name].trainable)


def test_every_parameter_has_logical_axis_names():
    for name in ("switch", "xmoe", "frozen"):
        cfg = RouterConfig(name=name, num_experts=E)
        boxed = MoeLayer(cfg, d_ff=F).init(jax.random.PRNGKey(0), jnp.ones((B, L, D)))
        boxed.pop(MOE_COLLECTION)
        for path, leaf in jax.tree_util.tree_flatten_with_path(
                boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))[0]:
            assert isinstance(leaf, nn.LogicallyPartitioned), path
            assert len(leaf.names) == leaf.value.ndim, path
    specs = nn.get_partition_spec(MoeLayer(RouterConfig(num_experts=E), d_ff=F).init(
        jax.random.PRNGKey(0), jnp.ones((B, L, D)))["params"])
    assert tuple(specs["wi_0"]) == ("expert", "embed", "mlp")
    assert tuple(specs["wo"]) == ("expert", "mlp", "embed")


def test_sown_metrics_have_documented_keys():
    layer, variables, x, ids = make("top_p", entropy_weight=0.1)
    _, moe = layer.apply(variables, x, mutable=[MOE_COLLECTION])
    metrics = moe[MOE_COLLECTION]["metrics"][0]
    assert set(metrics) == {"dropped_fraction", "expert_load", "max_violation", "dead_experts",
                            "experts_per_token",
                            "experts_per_token_hist", "router_entropy", "load_balance_loss",
                            "z_loss", "entropy_loss"}
    assert metrics["expert_load"].shape == (E,)


def test_dense_mlp_block_matches_manual_computation():
    x = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    block = MlpBlock(d_ff=F, activations=("relu",))
    p = nn.unbox(block.init(jax.random.PRNGKey(1), x))["params"]
    want = np.maximum(np.asarray(x) @ np.asarray(p["wi"]), 0) @ np.asarray(p["wo"])
    np.testing.assert_allclose(block.apply({"params": p}, x), want, rtol=1e-5, atol=1e-5)


def test_layer_errors_name_the_bad_value():
    x = jnp.ones((B, L, D))
    cfg = RouterConfig(num_experts=E)
    with pytest.raises(ValueError,
                       match="group_size=5 of MoeLayer must divide its batch\\*length=16 tokens"):
        MoeLayer(cfg, d_ff=F, group_size=5).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="router 'hash' needs token_ids"):
        MoeLayer(RouterConfig(name="hash", num_experts=E), d_ff=F).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="dispatch must be one of"):
        MoeLayer(cfg, d_ff=F, dispatch="dense").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="activations must be a non-empty sequence"):
        MoeLayer(cfg, d_ff=F, activations=("swish",)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"mask shape \(2, 3\) must be \(batch, length\)"):
        MoeLayer(cfg, d_ff=F).init(jax.random.PRNGKey(0), x, mask=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="jitter_eps > 0 in training needs rng"):
        layer = MoeLayer(RouterConfig(num_experts=E, jitter_eps=0.1), d_ff=F)
        v = layer.init(jax.random.PRNGKey(0), x)
        layer.apply(v, x, deterministic=False, mutable=[MOE_COLLECTION])


def test_fewer_tokens_than_a_group_form_one_group():
    """The trainer initialises on one token; a config with group_size set
    must still init, and a short batch routes as one group."""
    x = jax.random.normal(jax.random.PRNGKey(3), (B, L, D))
    cfg = RouterConfig("top_k", num_experts=E, k=2, eval_capacity_factor=1.0)
    params = MoeLayer(cfg, d_ff=F, group_size=B * L).init(jax.random.PRNGKey(0), x)
    MoeLayer(cfg, d_ff=F, group_size=64).init(jax.random.PRNGKey(0), x[:1, :1])
    one_group = MoeLayer(cfg, d_ff=F, group_size=B * L).apply(params, x)
    np.testing.assert_array_equal(MoeLayer(cfg, d_ff=F, group_size=4 * B * L).apply(params, x),
                                  one_group)


def test_shared_experts_add_an_always_active_ffn():
    """Output with shared experts = the routed output + a gated-GELU FFN of
    num_shared * shared_d_ff hidden units (numpy), on every token."""
    cfg = RouterConfig("top_k", num_experts=E, k=2, eval_capacity_factor=None)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    shared = MoeLayer(cfg, d_ff=F, num_shared_experts=2, shared_d_ff=8)
    variables = nn.unbox(shared.init(jax.random.PRNGKey(2), x))
    params = variables["params"]
    assert params["shared_experts"]["wi_0"].shape == (D, 16)
    routed = {k: v for k, v in params.items() if k != "shared_experts"}
    y_routed = MoeLayer(cfg, d_ff=F).apply({"params": routed}, x, mutable=[MOE_COLLECTION])[0]
    y = shared.apply({"params": params}, x, mutable=[MOE_COLLECTION])[0]
    p = {k: np.asarray(v)[None] for k, v in params["shared_experts"].items()}
    ffn = ref.gated_gelu_expert(p)
    want = np.asarray(y_routed) + np.stack([[ffn(0, v) for v in row] for row in np.asarray(x)])
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


def test_selection_bias_is_state_that_moves_toward_balance():
    """bias_update_rate: the bias lives in 'router_state' (not 'params'),
    moves by rate * sign(mean load - load) per training call, stays put in
    evaluation, and repeated updates balance a skewed router."""
    cfg = RouterConfig("top_k", num_experts=E, k=1, score_fn="sigmoid", bias_update_rate=0.02,
                       capacity_factor=None, eval_capacity_factor=None)
    layer = MoeLayer(cfg, d_ff=F)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, L, D)) + 1.0
    variables = nn.unbox(layer.init(jax.random.PRNGKey(2), x))
    variables.pop(MOE_COLLECTION)
    assert "selection_bias" not in variables["params"]
    np.testing.assert_array_equal(variables[ROUTER_STATE]["selection_bias"], np.zeros(E))

    @functools.partial(jax.jit, static_argnums=1)
    def step(variables, train):
        _, state = layer.apply(variables, x, deterministic=not train,
                               mutable=[MOE_COLLECTION, ROUTER_STATE])
        return state[ROUTER_STATE], state[MOE_COLLECTION]["metrics"][0]

    new, metrics = step(variables, True)
    load = np.asarray(metrics["expert_load"])
    np.testing.assert_allclose(new["selection_bias"], 0.02 * np.sign(load.mean() - load))
    frozen, _ = step(variables, False)
    np.testing.assert_array_equal(frozen["selection_bias"], np.zeros(E))
    first = float(metrics["max_violation"])
    for _ in range(300):
        variables = {**variables, ROUTER_STATE: new}
        new, metrics = step(variables, True)
    assert first > 1.0 and float(metrics["max_violation"]) < first / 2
