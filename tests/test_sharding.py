"""The model sharded over (data, model, expert) meshes of 8 CPU devices equals one device."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from model_util import init, tiny_config, tokens

from moejax.models import Transformer, abstract_params
from moejax.routing import ROUTERS, get_router
from moejax.train.partitioning import Layout, logical_rules, make_mesh, sharding_context, shardings


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config(encoder_router="expert_choice", decoder_router="top_k", num_heads=4,
                      vocab_size=48)
    enc, dec = tokens(0, (8, 12), 48, pad_from=[12, 9, 12, 5, 12, 12, 7, 12]), tokens(1, (8, 6), 48)
    model, params = init(cfg)
    boxed = abstract_params(cfg, boxed=True)
    loss = lambda m: lambda p, e, d: jax.numpy.mean(m.apply({"params": p}, e, d) ** 2)
    expected = jax.jit(jax.value_and_grad(loss(model)))(params, enc, dec)
    return cfg, enc, dec, params, boxed, loss, expected


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_logits_and_grads_equal_single_device(setup, shape):
    cfg, enc, dec, params, boxed, loss, (value, grads) = setup
    mesh, rules = make_mesh(shape), logical_rules()
    model = Transformer(cfg, mesh=mesh)
    sharded = jax.device_put(params, shardings(boxed, mesh, rules))
    experts = sharded["encoder"]["layers_1"]["mlp"]["wi_0"]
    assert len({str(s.index) for s in experts.addressable_shards}) == shape[1] * shape[2]
    with sharding_context(mesh, rules):
        out = jax.jit(jax.value_and_grad(loss(model)))(sharded, enc, dec)
        logits = jax.jit(lambda p: model.apply({"params": p}, enc, dec))(sharded)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(out[0], value, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           out[1], grads)


def test_make_mesh_fills_and_rejects():
    assert dict(make_mesh({"data": -1, "expert": 2}).shape) == {"data": 4, "model": 1, "expert": 2}
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        make_mesh((3, 2, 2))
    with pytest.raises(ValueError, match="8 devices are not divisible by 3"):
        make_mesh((-1, 3, 1))
    with pytest.raises(ValueError, match="unknown mesh axes \\['tensor'\\]"):
        make_mesh({"tensor": 8})
    with pytest.raises(ValueError, match="expert_axis must be 'expert' or 'data'"):
        logical_rules("model")


@pytest.mark.parametrize("router", [n for n in ROUTERS if get_router(n).trainable])
def test_every_router_maps_onto_the_mesh(router):
    """Each param's logical axes are distinct and in the rules (flax rejects
    a name used twice in one param, as X-MoE's [proj, experts] table had)."""
    cfg = tiny_config(encoder_router=router)
    mesh = make_mesh((2, 2, 2))
    placed = shardings(abstract_params(cfg, boxed=True), mesh, logical_rules())
    assert all(s.mesh == mesh for s in jax.tree.leaves(placed))


def test_layout_owns_the_batch_layout():
    """The batch spans data x expert (T5X MoE), or data alone when experts
    are sharded over data; a batch that does not split says why."""
    layout = Layout.create(data=2, expert=4)
    assert layout.batch_axes == ("data", "expert") and layout.data_parallel == 8
    assert layout.batch_sharding.spec == P(("data", "expert"), None)
    over_data = Layout.create(data=4, model=2, expert_axis="data")
    assert over_data.data_parallel == 4 and over_data.batch_sharding.spec == P("data", None)
    layout.check_rows(16, "batch_size=16")
    with pytest.raises(ValueError, match=r"batch_size=12 = 12 rows is not divisible by the "
                       r"data-parallel size 8: the batch spans mesh axes "
                       r"data \(2\) x expert \(4\)"):
        layout.check_rows(12, "batch_size=12")
    with pytest.raises(ValueError, match="expert_axis must be 'expert' or 'data', got 'model'"):
        Layout.create(data=8, expert_axis="model")


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_selection_bias_update_counts_the_global_batch(setup, shape):
    """The bias moves by the load over the whole batch: sharded over 8
    devices (data, and data x expert with experts sharded) it moves exactly
    as on one device."""
    from moejax.layers import ROUTER_STATE
    from moejax.routing import RouterConfig

    cfg, enc, dec, params, boxed, _, _ = setup
    router = RouterConfig("top_k", num_experts=4, score_fn="sigmoid", bias_update_rate=0.1)
    cfg = dataclasses.replace(cfg, decoder_moe=dataclasses.replace(cfg.decoder_moe,
                                                                   router=router))
    state = {"decoder": {"layers_1": {"mlp": {"selection_bias": jnp.linspace(-0.1, 0.1, 4)}}}}

    def update(model, params):
        _, out = model.apply({"params": params, ROUTER_STATE: state}, enc, dec,
                             enable_dropout=True, rngs={"router": jax.random.PRNGKey(0),
                                                        "dropout": jax.random.PRNGKey(1)},
                             mutable=[ROUTER_STATE, "moe"])
        return out[ROUTER_STATE]

    want = jax.jit(lambda p: update(Transformer(cfg), p))(params)
    mesh, rules = make_mesh(shape), logical_rules()
    sharded = jax.device_put(params, shardings(boxed, mesh, rules))
    with sharding_context(mesh, rules):
        got = jax.jit(lambda p: update(Transformer(cfg, mesh=mesh), p))(sharded)
    moved = want["decoder"]["layers_1"]["mlp"]["selection_bias"] - \
        state["decoder"]["layers_1"]["mlp"]["selection_bias"]
    assert np.allclose(np.abs(moved), 0.1) or np.any(moved == 0)
    np.testing.assert_array_equal(got["decoder"]["layers_1"]["mlp"]["selection_bias"],
                                  want["decoder"]["layers_1"]["mlp"]["selection_bias"])


def test_batch_balance_loss_spans_the_global_batch():
    """balance_scope='batch': one load-balance loss over every token of the
    batch (numpy reference from the router's own logits), the same on one
    device and sharded over (8,1,1) and (2,2,2) meshes; 'group' differs."""
    import reference as ref

    from moejax.routing import RouterConfig

    base = tiny_config(encoder_router="top_k", decoder_router="top_k", num_heads=4,
                       vocab_size=48)
    enc, dec = tokens(0, (8, 12), 48), tokens(1, (8, 6), 48)
    _, params = init(base)
    boxed = abstract_params(base, boxed=True)

    def with_scope(scope):
        router = RouterConfig("top_k", num_experts=4, k=2, balance_scope=scope,
                              eval_capacity_factor=None)
        return dataclasses.replace(base, decoder_moe=dataclasses.replace(base.decoder_moe,
                                                                         router=router))

    def losses(model, p):
        _, state = model.apply({"params": p}, enc, dec, mutable=["moe", "intermediates"],
                               capture_intermediates=lambda m, name: name == "router_logits")
        mlp = lambda tree: tree["decoder"]["layers_1"]["mlp"]
        return (mlp(state["moe"])["metrics"][0]["load_balance_loss"],
                mlp(state["intermediates"])["router_logits"][0])

    cfg = with_scope("batch")
    got, logits = jax.jit(lambda p: losses(Transformer(cfg), p))(params)
    probs = ref.softmax(np.asarray(logits)).reshape(1, 48, 4)  # 8 sequences of 6: one segment
    choices = [[[e for e, _ in row] for row in group]
               for group in ref.top_k_choices(probs, 2, False)]
    want = ref.load_balancing_loss(probs, choices, np.ones((1, 48), bool))
    assert float(got) == pytest.approx(want, rel=1e-5)
    group, _ = jax.jit(lambda p: losses(Transformer(with_scope("group")), p))(params)
    assert abs(float(group) - want) > 1e-3
    for shape in [(8, 1, 1), (2, 2, 2)]:
        mesh, rules = make_mesh(shape), logical_rules()
        sharded = jax.device_put(params, shardings(boxed, mesh, rules))
        with sharding_context(mesh, rules):
            value, _ = jax.jit(lambda p, mesh=mesh: losses(Transformer(cfg, mesh=mesh), p))(sharded)
        assert float(value) == pytest.approx(want, rel=1e-5), shape
