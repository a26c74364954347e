"""The 2026 routing rules against numpy references written from their
papers and reference code: quantile balancing (Kimi K3), null experts
(MoE++), ReLU routing with an adaptive L1 coefficient (ReMoE)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref

from moejax import routing
from moejax.layers import MOE_COLLECTION, ROUTER_STATE, MoeLayer
from moejax.routing import RouterConfig
from moejax.routing import state as router_state
from moejax.routing.top_k import quantile_balanced_bias

G, T, E = 3, 24, 8


def as_dict(r):
    """{(g, t, e): (slot, weight)} of the valid assignments."""
    tok, exp, slot, w, v = (np.asarray(a) for a in (r.token, r.expert, r.slot, r.weight, r.valid))
    return {(int(g), int(tok[g, a]), int(exp[g, a])): (int(slot[g, a]), float(w[g, a]))
            for g, a in zip(*np.nonzero(v))}


def assert_same(got, want):
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for key, (slot, w) in want.items():
        assert got[key][0] == slot, key
        assert got[key][1] == pytest.approx(w, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("k,ema,score_fn", [(1, 0.0, "sigmoid"), (2, 0.0, "sigmoid"),
                                            (2, 0.5, "softmax"), (3, 0.9, "sqrtsoftplus")])
def test_quantile_balancing_matches_reference(logits, mask, k, ema, score_fn):
    scores = np.asarray(routing.base.score(jnp.asarray(logits), score_fn)[0])
    bias = np.random.default_rng(1).normal(size=E).astype(np.float32) * 0.1
    got = quantile_balanced_bias(jnp.asarray(scores), jnp.asarray(mask), jnp.asarray(bias), k,
                                 ema)
    want = ref.quantile_balanced_bias(scores, mask, bias, k, ema)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if ema == 0:
        assert float(jnp.sum(got)) == pytest.approx(0.0, abs=1e-5)  # mean-centred


def test_quantile_balancing_balances_a_skewed_batch_in_a_few_solves():
    """Routing one batch again and again with the solved bias: a router that
    sends half the tokens to one expert ends balanced within a few steps,
    where the sign rule of the same step count barely moves."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(4, 64, E)) + np.eye(E)[0] * 3, jnp.float32)
    cfg = RouterConfig("top_k", num_experts=E, k=2, score_fn="sigmoid", quantile_balancing=True,
                       capacity_factor=None, eval_capacity_factor=None)
    sign = RouterConfig("top_k", num_experts=E, k=2, score_fn="sigmoid", bias_update_rate=1e-3,
                        capacity_factor=None, eval_capacity_factor=None)
    violation = {}
    for c in (cfg, sign):
        state = {router_state.SELECTION_BIAS: jnp.zeros(E)}
        for _ in range(5):
            result = routing.route(c, logits, bias=state[router_state.SELECTION_BIAS])
            violation.setdefault(c.quantile_balancing, []).append(
                float(result.metrics["max_violation"]))
            state = router_state.update_state(state, c, logits, None, result)
    assert violation[True][0] == violation[False][0] > 1.0
    assert violation[True][-1] < 0.1 and violation[False][-1] > 1.0


@pytest.mark.parametrize("k,cf,normalize", [(1, None, False), (2, 1.0, True), (3, 0.75, False)])
def test_null_experts_match_reference(logits, mask, k, cf, normalize):
    nulls = 3
    wide = np.concatenate([logits, np.random.default_rng(3).normal(
        size=(G, T, nulls)).astype(np.float32) * 2], -1)
    cfg = RouterConfig("top_k", num_experts=E, num_null_experts=nulls, k=k,
                       eval_capacity_factor=cf, normalize_weights=normalize)
    r = routing.route(cfg, jnp.asarray(wide), mask=jnp.asarray(mask))
    assert r.num_experts == E
    choices = ref.null_expert_choices(ref.softmax(wide), k, E, normalize)
    cap = T if cf is None else ref.capacity(T, E, k, cf)
    assert_same(as_dict(r), ref.claim_places(choices, mask, cap))
    real = [choices[g][t] for g in range(G) for t in range(T) if mask[g][t]]
    share = np.mean([sum(e is None for e, _ in row) / k for row in real])
    assert float(r.metrics["null_expert_share"]) == pytest.approx(share, rel=1e-6)
    assert 0 < share < 1
    # The balance loss spans the null experts' columns too.
    top = np.argsort(-ref.softmax(wide), -1, kind="stable")[..., :k]
    loss = ref.load_balancing_loss(ref.softmax(wide), top.tolist(), mask)
    assert float(r.metrics["load_balance_loss"]) == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("cf,cap", [(None, None), (1.0, None), (None, 3)])
def test_relu_router_matches_reference(logits, mask, cf, cap):
    cfg = RouterConfig("relu", num_experts=E, eval_capacity_factor=cf,
                       max_experts_per_token=cap)
    r = routing.route(cfg, jnp.asarray(logits), mask=jnp.asarray(mask))
    choices, l1, active = ref.relu_routing(logits, mask, cfg.k)
    if cap:
        choices = [[row[:cap] for row in group] for group in choices]
    places = T if cf is None else ref.capacity(T, E, cfg.k, cf)
    assert_same(as_dict(r), ref.claim_places(choices, mask, places))
    assert float(r.metrics["relu_l1_loss"]) == pytest.approx(l1, rel=1e-5)
    assert float(r.metrics["active_fraction"]) == pytest.approx(active, rel=1e-6)
    assert r.aux_loss == pytest.approx(cfg.z_loss_weight * float(r.metrics["z_loss"]), rel=1e-6)


def test_relu_gates_are_differentiable_and_zero_where_off(logits):
    """ReMoE's point: the combine weights are ReLU(logits), so the router
    gets a gradient from every active expert (no top-k cut)."""
    cfg = RouterConfig("relu", num_experts=E, eval_capacity_factor=None)

    def total(lg):
        return jnp.sum(routing.route(cfg, lg).weight)
    grad = np.asarray(jax.grad(total)(jnp.asarray(logits)))
    np.testing.assert_array_equal(grad, (logits > 0).astype(np.float32))


def test_l1_coefficient_follows_remoe_controller():
    """lambda *= 1.2 ** sign(active - target), so it grows while too many
    experts are active and shrinks while too few."""
    cfg = RouterConfig("relu", num_experts=E, k=2, relu_l1_growth=1.2)  # target 2/8
    state = {router_state.L1_COEFFICIENT: jnp.float32(1e-3)}
    for active, factor in ((0.5, 1.2), (0.1, 1 / 1.2), (0.25, 1.0)):
        result = routing.route(cfg, jnp.zeros((1, 4, E)))
        result = result.replace(metrics={**result.metrics, "active_fraction": jnp.float32(active)})
        new = router_state.update_state(state, cfg, jnp.zeros((1, 4, E)), None, result)
        assert float(new[router_state.L1_COEFFICIENT]) == pytest.approx(1e-3 * factor, rel=1e-6)


def test_relu_layer_steers_toward_the_target_sparsity():
    """Training a ReLU-routed layer on a regression: the adaptive L1
    coefficient brings the active fraction from about half the experts
    down to the target (2 of 8) while the penalty enters the loss."""
    cfg = RouterConfig("relu", num_experts=E, k=2, capacity_factor=None, z_loss_weight=0.0,
                       relu_l1_init=1e-4)
    layer = MoeLayer(cfg, d_ff=8, activations=("relu",))
    # Inputs with a mean direction (hidden states have one): with zero-mean
    # inputs every expert of a bias-free linear router is on for half the
    # tokens whatever its weights, and no penalty could make it sparser.
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16)) + 1.0
    target = jnp.tanh(x @ jax.random.normal(jax.random.PRNGKey(1), (16, 16)))
    variables = nn.unbox(layer.init(jax.random.PRNGKey(2), x))
    params, state = variables["params"], variables[ROUTER_STATE]
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, state):
        def loss(p):
            y, new = layer.apply({"params": p, ROUTER_STATE: state}, x, deterministic=False,
                                 mutable=[MOE_COLLECTION, ROUTER_STATE])
            aux = new[MOE_COLLECTION]["aux_loss"][0]
            active = new[MOE_COLLECTION]["metrics"][0]["active_fraction"]
            return jnp.mean(jnp.square(y - target)) + aux, (new[ROUTER_STATE], active)
        (_, (state, active)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, state, active

    opt_state = opt.init(params)
    fractions = []
    for _ in range(300):
        params, opt_state, state, active = step(params, opt_state, state)
        fractions.append(float(active))
    assert fractions[0] > 0.4
    assert abs(np.mean(fractions[-50:]) - 0.25) < 0.05
    assert float(state["l1_coefficient"]) > 1e-4


@pytest.mark.parametrize("kw,message", [
    (dict(name="top_p", quantile_balancing=True),
     "router 'top_p' does not read quantile_balancing=True; routers that do: frozen, switch, "
     "top_k, xmoe"),
    (dict(quantile_balancing=True, bias_update_rate=1e-3),
     "quantile_balancing and bias_update_rate both set the selection bias"),
    (dict(quantile_balancing=True, k=8), r"quantile_balancing needs k < num_experts=8 "),
    (dict(quantile_balancing=True, quantile_balancing_ema=1.0),
     r"quantile_balancing_ema must be in \[0, 1\), got 1.0"),
    (dict(num_null_experts=9), r"num_null_experts must be in \[0, num_experts=8\], got 9"),
    (dict(num_null_experts=2, bias_update_rate=1e-3),
     "num_null_experts=2 works without a selection bias"),
    (dict(name="expert_choice", num_null_experts=2),
     "router 'expert_choice' does not read num_null_experts=2"),
    (dict(name="relu", relu_active_fraction=0.0),
     r"relu_active_fraction \(the target fraction of experts active per token, 1 - ReMoE's "
     r"target sparsity\) must be in \(0, 1\], got 0.0"),
    (dict(name="relu", relu_active_fraction=1.5), r"must be in \(0, 1\], got 1.5"),
    (dict(name="relu", relu_l1_growth=1.0), "relu_l1_growth must be > 1, got 1.0"),
])
def test_frontier_options_bad_input(kw, message):
    with pytest.raises(ValueError, match=message):
        RouterConfig(**{"name": "top_k", "num_experts": 8, **kw})


def test_logits_must_include_the_null_experts():
    cfg = RouterConfig("top_k", num_experts=E, num_null_experts=2, k=2)
    with pytest.raises(ValueError, match="logits have 8 experts on the last axis but the router "
                                         r"scores 10 \(num_experts \+ num_null_experts\)"):
        routing.route(cfg, jnp.zeros((1, 4, E)))


def _murmur(h):
    h = np.uint64(h) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    return int(h ^ (h >> np.uint64(16)))


@pytest.mark.parametrize("k", [1, 3])
def test_hash_router_k_experts_per_token_id(k):
    """k = 1: murmur3(id) mod E, as before; k > 1: the k experts with the
    largest murmur3(id * E + e), each with weight 1/k; the same id always
    gets the same experts."""
    from moejax.routing.scores import hash_experts

    ids = np.array([[3, 17, 3, 250, 1023, 17]], np.int32)
    got = np.asarray(hash_experts(jnp.asarray(ids), E, k))
    for t, i in enumerate(ids[0]):
        if k == 1:
            want = [_murmur(i) % E]
        else:
            want = sorted(range(E), key=lambda e: -(_murmur(int(i) * E + e) >> 1))[:k]
        assert list(got[0, t]) == want
    layer = MoeLayer(RouterConfig("hash", num_experts=E, k=k, eval_capacity_factor=None),
                     d_ff=4, activations=("relu",))
    x = jnp.ones((1, 6, 8))
    variables = layer.init(jax.random.PRNGKey(0), x, token_ids=jnp.asarray(ids))
    _, state = layer.apply(variables, x, token_ids=jnp.asarray(ids),
                           mutable=[MOE_COLLECTION, "routing_trace"])
    w = np.asarray(state["routing_trace"]["trace"][0]["weights"])[0]
    for t in range(6):
        assert sorted(np.nonzero(w[t])[0]) == sorted(got[0, t])
        np.testing.assert_allclose(w[t][w[t] > 0], 1 / k, rtol=1e-6)


def _stack_config(tmp_path, table):
    from moejax.models import MoeConfig, T5Config

    path = str(tmp_path / "tid2eid.npy")
    np.save(path, table)
    first = RouterConfig("hash", num_experts=4, k=2, hash_table=path, eval_capacity_factor=None)
    moe = MoeConfig(interval=1, router=RouterConfig("top_k", num_experts=4, k=2,
                                                    eval_capacity_factor=None),
                    first_router=first, first_router_layers=1)
    return dict(vocab_size=40, d_model=16, num_heads=4, d_ff=32, num_encoder_layers=3,
                num_decoder_layers=2, encoder_moe=moe, decoder_moe=moe), T5Config


def test_hash_table_routes_the_first_layers_and_a_learned_router_the_rest(tmp_path):
    """DeepSeek-V4's stack: the first MoE layer routes each token id to its
    row of a fixed table (weights 1/k), the later layers with their learned
    router (which has a kernel; the hash layer has none)."""
    from moejax.models import Transformer

    table = np.stack([np.arange(40) % 4, (np.arange(40) + 1) % 4], 1).astype(np.int32)
    kw, T5Config = _stack_config(tmp_path, table)
    cfg = T5Config(**kw)
    model = Transformer(cfg)
    enc = jnp.asarray(np.random.RandomState(0).randint(1, 40, (2, 7)), jnp.int32)
    dec = jnp.asarray(np.random.RandomState(1).randint(1, 40, (2, 5)), jnp.int32)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), enc, dec))
    params = variables["params"]
    assert "router_kernel" not in params["encoder"]["layers_0"]["mlp"]
    assert "router_kernel" in params["encoder"]["layers_1"]["mlp"]
    _, state = model.apply({"params": params}, enc, dec, mutable=[MOE_COLLECTION,
                                                                  "routing_trace"])
    trace = state["routing_trace"]
    first = np.asarray(trace["encoder"]["layers_0"]["mlp"]["trace"][0]["weights"])
    for b in range(2):
        for t in range(7):
            assert sorted(np.nonzero(first[b, t])[0]) == sorted(table[int(enc[b, t])])
    later = np.asarray(trace["encoder"]["layers_2"]["mlp"]["trace"][0]["weights"])
    assert not np.allclose(later[later > 0], 0.5)  # learned weights, not 1/k
    # The dropless evaluation model lifts the first layers' router too.
    moe = kw["encoder_moe"]
    capped = dataclasses.replace(moe, first_router=dataclasses.replace(
        moe.first_router, eval_capacity_factor=2.0))
    lifted = T5Config(**{**kw, "encoder_moe": capped}).dropless().encoder_moe
    assert lifted.first_router.eval_capacity_factor is None


@pytest.mark.parametrize("change,message", [
    (lambda t: t[:30], r"hash_table='.*' has shape \(30, 2\); it must be \[vocab_size, k\] = "
                       r"\[40, 2\]"),
    (lambda t: t + 3, r"hash_table='.*' must hold integer experts in \[0, num_experts=4\), got "
                      r"int32 in \[3, 6\]"),
    (lambda t: np.stack([t[:, 0], t[:, 0]], 1), "hash_table='.*' names an expert twice in a row"),
])
def test_hash_table_bad_input(tmp_path, change, message):
    table = np.stack([np.arange(40) % 4, (np.arange(40) + 1) % 4], 1).astype(np.int32)
    kw, T5Config = _stack_config(tmp_path, change(table))
    with pytest.raises(ValueError, match="encoder_moe.first_router." + message):
        T5Config(**kw)


def test_per_layer_routers_bad_input(tmp_path):
    from moejax.models import MoeConfig

    table = np.stack([np.arange(40) % 4, (np.arange(40) + 1) % 4], 1).astype(np.int32)
    kw, T5Config = _stack_config(tmp_path, table)
    with pytest.raises(ValueError, match="first_router_layers=1 gives layers different routers, "
                                         "which scan_layers cannot scan"):
        T5Config(**kw, scan_layers=True)
    with pytest.raises(ValueError, match="first_router.num_experts=8 must equal "
                                         "router.num_experts=4"):
        MoeConfig(interval=1, router=RouterConfig("top_k", num_experts=4, k=2),
                  first_router=RouterConfig("hash", num_experts=8), first_router_layers=1)
    with pytest.raises(ValueError, match="router 'top_k' does not read hash_table='x.npy'"):
        RouterConfig("top_k", hash_table="x.npy")
    with pytest.raises(ValueError, match="hash_table='/nonexistent.npy' cannot be read"):
        RouterConfig("hash", num_experts=4, hash_table="/nonexistent.npy").check_hash_table(40)
