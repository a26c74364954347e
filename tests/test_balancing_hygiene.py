"""Balancing statistics that users of other frameworks found wrong (padding
counted, evaluation moving the bias, a sequence loss that depends on the
batch size, a bias that drifts): each checked for moejax's balance loss
(every scope), auxiliary-loss-free bias, quantile balancing and the ReLU
router's adaptive L1 coefficient."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from moejax import routing
from moejax.layers import MOE_COLLECTION, ROUTER_STATE, MoeLayer
from moejax.routing import RouterConfig

E, L = 8, 16


def _padded(seed: int, sequences: int):
    """logits [1, sequences * L, E] and a mask with the last quarter of each
    sequence padding."""
    rng = np.random.RandomState(seed)
    logits = rng.randn(1, sequences * L, E).astype(np.float32)
    mask = np.ones((1, sequences * L), bool)
    for s in range(sequences):
        mask[0, s * L + 3 * L // 4:(s + 1) * L] = False
    return logits, mask


@pytest.mark.parametrize("scope", ["group", "sequence", "batch"])
@pytest.mark.parametrize("score_fn", ["softmax", "sigmoid"])
def test_balance_loss_never_counts_padding(scope, score_fn):
    """What padded positions hold changes no balance statistic, in any scope."""
    logits, mask = _padded(0, 4)
    cfg = RouterConfig("top_k", num_experts=E, k=2, balance_scope=scope, score_fn=score_fn,
                       capacity_factor=None, eval_capacity_factor=None)
    noisy = np.where(mask[..., None], logits, 50 * np.random.RandomState(1).randn(*logits.shape))
    runs = [routing.route(cfg, jnp.asarray(lg), mask=jnp.asarray(mask), sequence_length=L)
            for lg in (logits, noisy.astype(np.float32))]
    for key in ("load_balance_loss", "expert_load", "max_violation"):
        np.testing.assert_allclose(runs[0].metrics[key], runs[1].metrics[key], rtol=1e-6,
                                   err_msg=key)


def test_sequence_loss_does_not_depend_on_the_batch_size():
    """balance_scope='sequence' (DeepSeek-V3's sequence-wise loss) is the mean
    of per-sequence losses: a batch of 4 sequences gives the mean of its two
    halves' losses, and the same sequences twice give the same loss."""
    logits, mask = _padded(2, 4)
    cfg = RouterConfig("top_k", num_experts=E, k=2, balance_scope="sequence",
                       capacity_factor=None, eval_capacity_factor=None)

    def loss(lg, m):
        return float(routing.route(cfg, jnp.asarray(lg), mask=jnp.asarray(m),
                                   sequence_length=L).metrics["load_balance_loss"])

    half = 2 * L
    whole = loss(logits, mask)
    halves = [loss(logits[:, :half], mask[:, :half]), loss(logits[:, half:], mask[:, half:])]
    assert whole == pytest.approx(np.mean(halves), rel=1e-6)
    twice = loss(np.concatenate([logits, logits], 1), np.concatenate([mask, mask], 1))
    assert twice == pytest.approx(whole, rel=1e-6)


def _bias_layer():
    cfg = RouterConfig("top_k", num_experts=E, k=2, score_fn="sigmoid", bias_update_rate=0.01,
                       capacity_factor=None, eval_capacity_factor=None)
    return MoeLayer(cfg, d_ff=8, activations=("relu",), group_size=2 * L)


def test_padding_and_evaluation_never_move_the_selection_bias():
    """The aux-loss-free bias moves by the load of real tokens only: the
    padded positions' inputs change nothing, and the update equals
    rate * sign(mean load - load) of the real tokens' choices; evaluation
    leaves it where it is."""
    layer = _bias_layer()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 2 * L, 16)) + 0.5
    mask = jnp.asarray(np.arange(2 * L) < 3 * L // 2)[None].repeat(2, 0)
    variables = nn.unbox(layer.init(jax.random.PRNGKey(1), x, mask=mask))
    variables.pop(MOE_COLLECTION)

    def step(inputs, train=True):
        _, state = layer.apply(variables, inputs, mask=mask, deterministic=not train,
                               mutable=[MOE_COLLECTION, ROUTER_STATE])
        return state[ROUTER_STATE]["selection_bias"], state[MOE_COLLECTION]["metrics"][0]

    bias, metrics = step(x)
    other = jnp.where(mask[..., None], x, 100.0 * jax.random.normal(jax.random.PRNGKey(2),
                                                                      x.shape))
    np.testing.assert_array_equal(step(other)[0], bias)
    # The load, from the real tokens' own choices (the layer's router kernel).
    logits = np.asarray(x @ variables["params"]["router_kernel"])[np.asarray(mask)]
    chosen = np.argsort(-logits, -1)[:, :2]  # sigmoid is monotone: the top-2 logits
    load = np.bincount(chosen.ravel(), minlength=E) / chosen.size
    np.testing.assert_allclose(metrics["expert_load"], load, rtol=1e-6)
    np.testing.assert_allclose(bias, 0.01 * np.sign(load.mean() - load), rtol=1e-6)
    np.testing.assert_array_equal(step(x, train=False)[0], np.zeros(E))


@pytest.mark.parametrize("score_fn,groups", [("sigmoid", 1), ("sigmoid", 4),
                                             ("sqrtsoftplus", 2), ("softmax", 1)])
def test_a_common_shift_of_the_bias_changes_no_choice(score_fn, groups):
    """Why the bias is not mean-centred: the sign update can drift every
    expert's bias together (seven idle experts rise while one busy one
    falls), but selection by top-k of score + bias, and the group ranking by
    the sum of each group's two best, are unchanged by adding one constant
    to every expert, so the drift never moves a token (the weights never
    see the bias)."""
    logits, mask = _padded(3, 2)
    cfg = RouterConfig("top_k", num_experts=E, k=2, score_fn=score_fn, expert_groups=groups,
                       topk_groups=max(1, groups // 2), capacity_factor=None,
                       eval_capacity_factor=None)
    bias = np.random.RandomState(4).randn(E).astype(np.float32) * 0.1
    runs = [routing.route(cfg, jnp.asarray(logits), mask=jnp.asarray(mask),
                          bias=jnp.asarray(bias + shift)) for shift in (0.0, 3.0)]
    for field in ("token", "expert", "slot", "valid"):
        np.testing.assert_array_equal(getattr(runs[0], field), getattr(runs[1], field))
    np.testing.assert_allclose(runs[0].weight, runs[1].weight, rtol=1e-6)


def _stateful_layer(**router):
    cfg = RouterConfig(num_experts=E, capacity_factor=None, eval_capacity_factor=None, **router)
    return MoeLayer(cfg, d_ff=8, activations=("relu",), group_size=2 * L)


@pytest.mark.parametrize("router", [
    dict(name="top_k", k=2, score_fn="sigmoid", quantile_balancing=True),
    dict(name="top_k", k=2, score_fn="sigmoid", quantile_balancing=True,
         quantile_balancing_ema=0.5),
    dict(name="relu", k=2)], ids=["quantile", "quantile_ema", "relu_l1"])
def test_padding_and_evaluation_never_move_router_state(router):
    """Quantile balancing's solved bias and the ReLU router's L1 coefficient
    (and the penalty it weighs) depend on the real tokens only, and
    evaluation leaves the state where it is. The quantile bias equals the
    numpy reference on the real tokens' scores and is mean-centred."""
    layer = _stateful_layer(**router)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 2 * L, 16)) + 0.5
    mask = jnp.asarray(np.arange(2 * L) < 3 * L // 2)[None].repeat(2, 0)
    variables = nn.unbox(layer.init(jax.random.PRNGKey(1), x, mask=mask))
    variables.pop(MOE_COLLECTION)
    start = variables[ROUTER_STATE]
    if "relu" not in router["name"]:  # route the batch with a bias already off zero
        variables[ROUTER_STATE] = start = {"selection_bias": jnp.linspace(-0.1, 0.1, E)}

    def step(inputs, train=True):
        _, state = layer.apply(variables, inputs, mask=mask, deterministic=not train,
                               mutable=[MOE_COLLECTION, ROUTER_STATE])
        return state[ROUTER_STATE], state[MOE_COLLECTION]

    state, moe = step(x)
    other = jnp.where(mask[..., None], x, 100.0 * jax.random.normal(jax.random.PRNGKey(2),
                                                                      x.shape))
    state2, moe2 = step(other)
    for name in state:
        np.testing.assert_array_equal(state2[name], state[name], err_msg=name)
        assert np.any(np.asarray(state[name]) != np.asarray(start[name])), name
    np.testing.assert_allclose(moe2["aux_loss"][0], moe["aux_loss"][0], rtol=1e-6)
    frozen, _ = step(x, train=False)
    for name in start:
        np.testing.assert_array_equal(frozen[name], start[name], err_msg=name)
    if "selection_bias" in state:
        logits = np.asarray(x @ variables["params"]["router_kernel"]).reshape(-1, 2 * L, E)
        scores = 1 / (1 + np.exp(-logits))
        ema = router.get("quantile_balancing_ema", 0.0)
        want = ref.quantile_balanced_bias(scores, np.asarray(mask).reshape(-1, 2 * L),
                                          np.asarray(start["selection_bias"]), 2, ema)
        np.testing.assert_allclose(state["selection_bias"], want, rtol=1e-5, atol=1e-6)
        assert float(np.sum(state["selection_bias"])) == pytest.approx(0.0, abs=1e-5)
