"""Routers against the numpy reference, hand-computed losses and sampling statistics."""
import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from moejax import routing
from moejax.routing import ROUTERS, RouterConfig, compute_capacity
from moejax.routing.expert_choice import EC_CAP_ENTROPY, EC_CAP_ITERATIONS
from moejax.routing.gshard import second_expert_keep_probability

G, T, E = 3, 24, 6


def route(name, logits, mask=None, rng=0, train=False, **kw):
    cfg = RouterConfig(name=name, num_experts=logits.shape[-1], **kw)
    return routing.route(cfg, jnp.asarray(logits), mask=None if mask is None else jnp.asarray(mask),
                         rng=jax.random.PRNGKey(rng), train=train)


def as_dict(r):
    """{(g, t, e): (slot, weight)} of the valid assignments."""
    out = {}
    tok, exp, slot, w, v = (np.asarray(a) for a in (r.token, r.expert, r.slot, r.weight, r.valid))
    for g, a in zip(*np.nonzero(v)):
        key = (int(g), int(tok[g, a]), int(exp[g, a]))
        assert key not in out, f"duplicate assignment {key}"
        out[key] = (int(slot[g, a]), float(w[g, a]))
    assert np.all(np.asarray(r.weight)[~v] == 0)
    return out


def assert_same(got, want):
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    for key, (slot, w) in want.items():
        assert got[key][0] == slot, (key, got[key], want[key])
        assert got[key][1] == pytest.approx(w, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("k,cf,normalize,prioritized", [
    (1, 1.0, False, False), (1, 0.5, False, True), (2, 1.0, True, False),
    (2, 0.75, False, True), (3, 1.25, True, True), (2, None, False, False)])
def test_top_k_matches_reference(logits, mask, k, cf, normalize, prioritized):
    r = route("top_k", logits, mask, k=k, eval_capacity_factor=cf, normalize_weights=normalize,
              batch_prioritized=prioritized)
    probs = ref.softmax(logits)
    cap = T if cf is None else ref.capacity(T, E, k, cf)
    assert r.capacity == cap
    prio = probs.max(-1) if prioritized else None
    want = ref.claim_places(ref.top_k_choices(probs, k, normalize), mask, cap, prio)
    assert_same(as_dict(r), want)


def test_position_and_priority_order_drop_different_tokens(logits, mask):
    by_position = as_dict(route("top_k", logits, mask, k=1, eval_capacity_factor=0.5))
    by_priority = as_dict(route("top_k", logits, mask, k=1, eval_capacity_factor=0.5,
                                batch_prioritized=True))
    assert set(by_position) != set(by_priority)
    # Under position order, an expert's kept tokens are its earliest ones.
    probs = ref.softmax(logits)
    for (g, t, e) in by_position:
        earlier = [s for s in range(t) if mask[g, s] and probs[g, s].argmax() == e]
        assert all((g, s, e) in by_position for s in earlier)


def test_switch_is_top1_and_vmoe_eval_is_prioritized_top_k(logits, mask):
    assert_same(as_dict(route("switch", logits, mask)),
                as_dict(route("top_k", logits, mask, k=1)))
    assert_same(as_dict(route("vmoe", logits, mask, k=2)),
                as_dict(route("top_k", logits, mask, k=2, batch_prioritized=True)))
    # In training the V-MoE noise changes some decisions.
    assert set(as_dict(route("vmoe", logits, mask, k=2, train=True))) != \
        set(as_dict(route("vmoe", logits, mask, k=2)))


def test_gshard_eval_keeps_both_with_renormalised_weights(logits, mask):
    r = route("gshard_top2", logits, mask, eval_capacity_factor=1.0)
    probs = ref.softmax(logits)
    want = ref.claim_places(ref.top_k_choices(probs, 2, normalize=True), mask,
                            ref.capacity(T, E, 2, 1.0))
    assert_same(as_dict(r), want)


def test_gshard_second_expert_statistics():
    # Every token has g1 = 0.5, g2 = 0.3: keep the second with p = min(1, 0.6/0.8) = 0.75.
    p = np.array([0.5, 0.3, 0.1, 0.1])
    n = 20000
    logits = np.tile(np.log(p), (1, n, 1)).astype(np.float32)
    r = route("gshard_top2", logits, train=True, capacity_factor=None, rng=7)
    d = np.asarray(r.valid).reshape(n, 2)
    assert d[:, 0].all()
    freq = d[:, 1].mean()
    assert abs(freq - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    w = np.asarray(r.weight).reshape(n, 2)
    np.testing.assert_allclose(w[d[:, 1]], np.tile([0.5 / 0.8, 0.3 / 0.8], (d[:, 1].sum(), 1)),
                               rtol=1e-5)
    np.testing.assert_allclose(w[~d[:, 1], 0], 1.0, rtol=1e-6)
    assert float(second_expert_keep_probability(0.4, 0.4)) == 1.0


def test_gshard_first_choices_claim_capacity_first():
    # 4 tokens all prefer expert 0 then 1; capacity 2 per expert.
    logits = np.log(np.array([[[0.6, 0.4]] * 4], np.float32))
    r = route("gshard_top2", logits, eval_capacity_factor=0.5)  # C = ceil(0.5*4*2/2) = 2
    got = as_dict(r)
    assert set(got) == {(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)}


@pytest.mark.parametrize("cf,cap", [(1.0, None), (2.0, None), (2.0, 2), (0.5, 1), (2.0, 1)])
def test_expert_choice_matches_reference(logits, mask, cf, cap):
    r = route("expert_choice", logits, mask, eval_capacity_factor=cf, max_experts_per_token=cap)
    c = ref.capacity(T, E, 1, cf)
    assert r.capacity == c
    probs = ref.softmax(logits)
    if cap is None:
        want = ref.expert_choice(probs, mask, c)
    else:
        want = ref.ec_cap_assignment(probs, mask, c, cap, EC_CAP_ENTROPY, EC_CAP_ITERATIONS)
    got = as_dict(r)
    assert set(got) == set(want)
    for key, w in want.items():
        assert got[key][1] == pytest.approx(w, rel=1e-5)


def test_ec_cap_fills_capacity_that_truncation_leaves_empty(logits):
    """EC-CAP solves the capped assignment (Zhou et al. 2022, sec. 3.3), so
    experts take other tokens instead of losing slots to the cap: more
    experts per token than truncating plain expert choice, the cap always
    holds, and the chosen scores are close to the linear program's optimum
    (scipy's HiGHS on the exact LP)."""
    from scipy.optimize import linprog

    cap, cf = 2, 2.0
    c = ref.capacity(T, E, 1, cf)
    capped = as_dict(route("expert_choice", logits, eval_capacity_factor=cf,
                           max_experts_per_token=cap))
    truncated = ref.expert_choice(ref.softmax(logits), np.ones((G, T), bool), c, cap)
    per_token = collections.Counter((g, t) for (g, t, e) in capped)
    assert max(per_token.values()) <= cap
    assert len(capped) > len(truncated)
    assert len(capped) >= 0.95 * G * T * cap  # nearly every slot used (E * C = T * cap here)
    probs = ref.softmax(logits)
    for g in range(G):
        s = probs[g].T.reshape(-1)  # A[e, t] flattened
        rows = np.kron(np.eye(E), np.ones(T))  # sum_t A[e, t] = C
        cols = np.kron(np.ones(E), np.eye(T))  # sum_e A[e, t] <= cap
        best = -linprog(-s, A_ub=cols, b_ub=np.full(T, cap), A_eq=rows, b_eq=np.full(E, c),
                        bounds=(0, 1), method="highs").fun
        ours = sum(probs[g, t, e] for (gg, t, e) in capped if gg == g)
        assert best * 0.97 <= ours <= best + 1e-6


def test_expert_choice_gives_every_expert_exactly_c_tokens(logits):
    r = route("expert_choice", logits, eval_capacity_factor=2.0)
    per_expert = np.zeros((G, E), int)
    for (g, _t, e) in as_dict(r):
        per_expert[g, e] += 1
    assert (per_expert == math.ceil(2.0 * T / E)).all()


@pytest.mark.parametrize("threshold", [0.2, 0.4, 0.7, 1.0])
def test_top_p_keeps_smallest_set_reaching_threshold(logits, mask, threshold):
    r = route("top_p", logits, mask, threshold=threshold, eval_capacity_factor=None)
    probs = ref.softmax(logits)
    want = ref.claim_places(ref.top_p_choices(probs, threshold), mask, T)
    got = as_dict(r)
    # float32 cumsum may stop one expert earlier or later: check the set property
    if threshold == 1.0:
        for g in range(G):
            for t in range(T):
                mine = [e for (gg, tt, e) in got if (gg, tt) == (g, t)]
                assert len(mine) >= E - 1 if mask[g, t] else not mine
        return
    assert_same(got, want)
    for g in range(G):
        for t in np.nonzero(mask[g])[0]:
            kept = sorted((probs[g, t, e] for (gg, tt, e) in got if (gg, tt) == (g, t)),
                          reverse=True)
            assert sum(kept) >= threshold - 1e-6 and sum(kept[:-1]) < threshold


def test_top_p_cap_and_capacity(logits, mask):
    r = route("top_p", logits, mask, threshold=0.9, max_experts_per_token=2,
              eval_capacity_factor=1.0)
    assert r.capacity == compute_capacity(T, E, 2, 1.0)
    probs = ref.softmax(logits)
    choices = [[row[:2] for row in group] for group in ref.top_p_choices(probs, 0.9)]
    assert_same(as_dict(r), ref.claim_places(choices, mask, r.capacity))


def test_moesart_inference_is_top_k_with_uniform_weights(logits, mask):
    """Evaluation: the k most probable experts with the 'zero' adjustment,
    a_i = o_i - log(k p_i), i.e. weight 1/k each (the authors' gate)."""
    r = route("moesart", logits, mask, k=2, eval_capacity_factor=None)
    choices = [[[(e, 0.5) for e, _ in row] for row in group]
               for group in ref.top_k_choices(ref.softmax(logits), 2, False)]
    assert_same(as_dict(r), ref.claim_places(choices, mask, T))
    renorm = route("moesart", logits, mask, k=2, eval_capacity_factor=None,
                   sample_weighting="renormalized")
    assert_same(as_dict(renorm), ref.claim_places(ref.top_k_choices(ref.softmax(logits), 2, True),
                                                  mask, T))


def _moesart_draws(p, n, rng=3, **kw):
    logits = np.tile(np.log(p), (1, n, 1)).astype(np.float32)
    r = route("moesart", logits, train=True, capacity_factor=None, rng=rng, **kw)
    per_token = collections.defaultdict(dict)
    for (_, t, e), (_, w) in as_dict(r).items():
        per_token[t][e] = w
    return [per_token[t] for t in range(n)]


@pytest.mark.parametrize("sampling", ["without_replacement", "with_replacement"])
def test_moesart_sampling_statistics(sampling):
    p = np.array([0.5, 0.25, 0.15, 0.1])
    n = 20000
    draws = _moesart_draws(p, n, k=2, sampling=sampling)
    freq = np.zeros(4)
    for d in draws:
        for e in d:
            freq[e] += 1 / n
    if sampling == "without_replacement":  # P(e in sample) = p_e + sum_j p_j p_e / (1 - p_j)
        want = np.array([p[e] + sum(p[j] * p[e] / (1 - p[j]) for j in range(4) if j != e)
                         for e in range(4)])
        assert all(len(d) == 2 for d in draws)
    else:  # two independent draws
        want = 1 - (1 - p) ** 2
    np.testing.assert_allclose(freq, want, atol=4 * math.sqrt(0.25 / n))


def test_moesart_exact_weights_on_hand_made_p():
    """k=2, small-random: the kept expert j has w_j = p_j / (1 + p_j) and the
    other 1 / (1 + p_j); 'zero' gives 1/2 each; k=3 small-random gives the
    two others (1 - w_j) / 2 each."""
    p = np.array([0.5, 0.25, 0.15, 0.1])
    for d in _moesart_draws(p, 200, k=2):
        (a, wa), (b, wb) = d.items()
        assert (wa, wb) in ((pytest.approx(p[a] / (1 + p[a]), rel=1e-5),
                             pytest.approx(1 / (1 + p[a]), rel=1e-5)),
                            (pytest.approx(1 / (1 + p[b]), rel=1e-5),
                             pytest.approx(p[b] / (1 + p[b]), rel=1e-5)))
    for d in _moesart_draws(p, 200, k=2, sample_weighting="zero"):
        assert sorted(d.values()) == [pytest.approx(0.5)] * 2
    for d in _moesart_draws(p, 200, k=3):
        j = [e for e, w in d.items() if w == pytest.approx(p[e] / (1 + p[e]), rel=1e-5)]
        assert j, d
        for e, w in d.items():
            if e != j[0]:
                assert w == pytest.approx((1 - p[j[0]] / (1 + p[j[0]])) / 2, rel=1e-5)


@pytest.mark.parametrize("weighting", ["small_random", "zero", "renormalized"])
def test_moesart_expected_weights_monte_carlo(weighting):
    """E[w_e] over 40k tokens against exact enumeration of the sampled sets
    (tests/reference.py, from the authors' gate). Renormalising p over the
    sample gives the top expert (p = 0.45) E[w] = 0.56: the bias MOESART's
    adjustment removes (small-random: 0.439, within 0.015 of p everywhere)."""
    p = np.array([0.45, 0.25, 0.1, 0.1, 0.05, 0.05])
    n = 40000
    draws = _moesart_draws(p, n, rng=11, k=2, sample_weighting=weighting)
    got = np.zeros((n, len(p)))
    for t, d in enumerate(draws):
        for e, w in d.items():
            got[t, e] = w
    want = ref.moesart_expected_weights(p, 2, weighting)
    se = got.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(got.mean(0) - want), 4 * se + 1e-6)
    if weighting == "renormalized":
        assert want[0] > 0.55
    if weighting == "small_random":
        assert np.abs(want - p).max() < 0.015


def test_moesart_trimmed_lasso_replaces_load_balance():
    # p = [.5, .3, .2] and [.6, .25, .15]: mass outside the top 2 = .2 and .15.
    logits = np.log(np.array([[[0.5, 0.3, 0.2], [0.6, 0.25, 0.15]]], np.float32))
    r = route("moesart", logits, k=2, trimmed_lasso_weight=0.5, z_loss_weight=0.0)
    assert float(r.metrics["trimmed_lasso_loss"]) == pytest.approx(0.175, rel=1e-5)
    assert float(r.aux_loss) == pytest.approx(0.5 * 0.175, rel=1e-5)
    assert "load_balance_loss" not in r.metrics


def test_load_balance_loss_counts_every_selected_expert(logits, mask):
    probs = ref.softmax(logits)
    for name, kw in (("top_k", dict(k=2)), ("top_k", dict(k=3)), ("gshard_top2", {})):
        r = route(name, logits, mask, **kw)
        k = r.token.shape[1] // T
        choices = [[[e for e, _ in row] for row in group]
                   for group in ref.top_k_choices(probs, k, False)]
        assert float(r.metrics["load_balance_loss"]) == pytest.approx(
            ref.load_balancing_loss(probs, choices, mask), rel=1e-5), name
    r = route("top_p", logits, mask, threshold=0.6)
    choices = [[[e for e, _ in row] for row in group] for group in ref.top_p_choices(probs, 0.6)]
    assert float(r.metrics["load_balance_loss"]) == pytest.approx(
        ref.load_balancing_loss(probs, choices, mask), rel=1e-5)


@pytest.mark.parametrize("scope", ["group", "sequence", "batch"])
def test_balance_scope_regroups_the_load_balance_loss(logits, mask, scope):
    """The reference loss over each group (T tokens), each sequence
    (sequence_length consecutive tokens of the flattened [G * T]) or all
    G * T tokens at once, padding excluded, for every scoped kernel."""
    seq = T // 2
    segment = {"group": T, "sequence": seq, "batch": G * T}[scope]
    regroup = lambda a: np.asarray(a).reshape(G * T // segment, segment, *np.shape(a)[2:])
    probs = ref.softmax(logits)
    for name, kw in (("top_k", dict(k=2)), ("gshard_top2", {}), ("top_p", dict(threshold=0.6))):
        cfg = RouterConfig(name=name, num_experts=E, balance_scope=scope, **kw)
        r = routing.route(cfg, jnp.asarray(logits), mask=jnp.asarray(mask), sequence_length=seq,
                          rng=jax.random.PRNGKey(0))
        rows = (ref.top_p_choices(probs, 0.6) if name == "top_p" else
                ref.top_k_choices(probs, 2, False))
        choices = np.array([[[e for e, _ in row] + [-1] * (E - len(row)) for row in group]
                            for group in rows])
        got = [[[e for e in row if e >= 0] for row in group] for group in regroup(choices)]
        want = ref.load_balancing_loss(regroup(probs), got, regroup(mask))
        assert float(r.metrics["load_balance_loss"]) == pytest.approx(want, rel=1e-5), name
    with pytest.raises(ValueError, match="has no Switch load-balance loss to scope"):
        RouterConfig("expert_choice", balance_scope="batch")
    with pytest.raises(ValueError, match="balance_scope must be one of"):
        RouterConfig("top_k", balance_scope="global")


def test_vmoe_aux_losses_are_importance_and_load(logits):
    from moejax.routing.top_k import importance_loss, load_loss

    noisy = logits + 0.3 * np.random.default_rng(5).normal(size=logits.shape).astype(np.float32)
    imp, load = ref.vmoe_losses(logits, noisy, 2, 0.3)
    full = jnp.ones((G, T), bool)
    got = float(importance_loss(jax.nn.softmax(jnp.asarray(logits)), full))
    assert got == pytest.approx(imp, rel=1e-4)
    assert float(load_loss(jnp.asarray(logits), jnp.asarray(noisy), full, 2, 0.3)) == \
        pytest.approx(load, rel=1e-4)
    r = route("vmoe", logits, k=2, train=True, load_balance_weight=0.1, z_loss_weight=0.0)
    m = r.metrics
    assert "load_balance_loss" not in m and float(m["load_loss"]) > 0
    assert float(m["importance_loss"]) == pytest.approx(imp, rel=1e-4)
    assert float(r.aux_loss) == pytest.approx(0.05 * (imp + float(m["load_loss"])), rel=1e-5)


def test_xmoe_routing_starts_near_uniform():
    """X-MoE scores on a 16-dim hypersphere with orthogonal expert
    embeddings and temperature 1 at init: the top-1 probability is near
    1/E, not ~0.74 as with temperature 0.07."""
    import flax.linen as nn

    from moejax.layers import MoeLayer

    layer = MoeLayer(RouterConfig("xmoe", num_experts=8), d_ff=8, activations=("relu",))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 32))
    v = nn.unbox(layer.init(jax.random.PRNGKey(1), x))
    emb = np.asarray(v["params"]["router_expert_embeddings"])
    np.testing.assert_allclose(emb.T @ emb, np.eye(8), atol=1e-5)  # orthonormal columns
    _, state = layer.apply(v, x, capture_intermediates=lambda m, n: n == "router_logits",
                           mutable=["intermediates"])
    logits = state["intermediates"]["router_logits"][0]
    top1 = float(jnp.mean(jnp.max(jax.nn.softmax(logits, -1), -1)))
    assert top1 < 0.2, top1
    assert float(jnp.max(jnp.abs(logits))) <= 1.0 + 1e-5  # |cos| / tau with tau = 1


def test_aux_losses_hand_computed():
    # Three real tokens, p = [.25, .75], [.75, .25], [.25, .75]; a padding
    # token with extreme logits must not count.
    l3 = math.log(3)
    logits = np.array([[[0, l3], [l3, 0], [0, l3], [50, -50]]], np.float32)
    mask = np.array([[True, True, True, False]])
    r = route("top_p", logits, mask, threshold=0.5, load_balance_weight=0.1, z_loss_weight=0.01,
              entropy_weight=0.5, eval_capacity_factor=None)
    lb = 2 * (1 / 3 * 5 / 12 + 2 / 3 * 7 / 12)
    z = math.log(4) ** 2
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    m = r.metrics
    assert float(m["load_balance_loss"]) == pytest.approx(lb, rel=1e-5)
    assert float(m["z_loss"]) == pytest.approx(z, rel=1e-5)
    assert float(m["entropy_loss"]) == pytest.approx(h, rel=1e-5)
    assert float(m["router_entropy"]) == pytest.approx(h, rel=1e-5)
    assert float(r.aux_loss) == pytest.approx(0.1 * lb + 0.01 * z + 0.5 * h, rel=1e-5)
    assert float(m["experts_per_token"]) == pytest.approx(1.0)
    np.testing.assert_allclose(m["expert_load"], [1 / 3, 2 / 3], rtol=1e-6)


def test_padding_is_never_routed_and_not_counted(logits, mask):
    for name in ROUTERS:
        kw = {"eval_capacity_factor": 2.0}
        r = route(name, logits, mask, **kw)
        for (g, t, _e) in as_dict(r):
            assert mask[g, t], (name, g, t)
        # Statistics are unchanged by what the padded positions hold.
        junk = 40 * np.random.default_rng(1).normal(size=logits.shape)
        noisy = np.where(mask[..., None], logits, junk)
        r2 = route(name, noisy.astype(np.float32), mask, **kw)
        for key in r.metrics:
            np.testing.assert_allclose(r.metrics[key], r2.metrics[key], rtol=1e-5, atol=1e-6,
                                       err_msg=name)


def test_dropped_fraction_metric(logits):
    r = route("switch", logits, eval_capacity_factor=0.5)
    kept_tokens = {(g, t) for (g, t, e) in as_dict(r)}
    assert float(r.metrics["dropped_fraction"]) == pytest.approx(1 - len(kept_tokens) / (G * T))


def test_experts_per_token_histogram(logits, mask):
    r = route("expert_choice", logits, mask, eval_capacity_factor=2.0)
    counts = collections.Counter((g, t) for (g, t, e) in as_dict(r))
    want = np.bincount([counts[(g, t)] for g in range(G) for t in range(T) if mask[g, t]],
                       minlength=E + 1) / mask.sum()
    np.testing.assert_allclose(r.metrics["experts_per_token_hist"], want, rtol=1e-6)


def test_kernels_jit_and_vmap(logits):
    cfg = RouterConfig(name="top_k", num_experts=E, k=2)
    f = jax.jit(lambda l: routing.route(cfg, l))
    batched = jax.vmap(f)(jnp.stack([logits, logits]))
    np.testing.assert_array_equal(batched.expert[1], f(logits).expert)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(name="top_k", k=7), "k must be in [1, num_experts=6], got k=7"),
    (dict(name="switch", k=2), "router 'switch' uses k=1"),
    (dict(name="top_k", capacity_factor=0.0), "capacity_factor must be > 0"),
    (dict(name="top_k", eval_capacity_factor=-1.0), "eval_capacity_factor must be > 0"),
    (dict(name="top_p", threshold=0.0), "threshold must be in (0, 1]"),
    (dict(name="top_p", threshold=1.5), "threshold must be in (0, 1]"),
    (dict(name="expert_choice", max_experts_per_token=9), "max_experts_per_token"),
    (dict(name="moesart", sampling="gumbel"), "sampling must be one of"),
    (dict(name="moesart", sample_weighting="softmax"), "sample_weighting must be one of"),
    (dict(name="vmoe", noise_std=-1.0), "noise_std must be >= 0"),
    (dict(name="xmoe", xmoe_temperature=0.0), "xmoe_temperature > 0"),
    (dict(name="top_k", trimmed_lasso_weight=-1.0), "trimmed_lasso_weight must be >= 0"),
    (dict(name="no_such_router"), "unknown router name 'no_such_router'; known routers: "
                                  "expert_choice, frozen, gshard_top2, hash"),
])
def test_bad_config_is_a_clear_value_error(kwargs, needle):
    with pytest.raises(ValueError) as err:
        RouterConfig(num_experts=E, **kwargs)
    assert needle in str(err.value)


def test_bad_shapes_are_clear_value_errors(logits):
    cfg = RouterConfig(name="top_k", num_experts=E)
    with pytest.raises(ValueError, match=r"mask shape \(3, 5\) must equal logits.shape\[:2\]"):
        routing.route(cfg, jnp.asarray(logits), mask=jnp.ones((3, 5), bool))
    with pytest.raises(ValueError,
                       match=r"logits have 6 experts on the last axis but the router scores 8 "):
        routing.route(RouterConfig(name="top_k", num_experts=8), jnp.asarray(logits))
    with pytest.raises(ValueError, match=r"logits must be \[groups, tokens, experts\]"):
        routing.route(cfg, jnp.asarray(logits[0]))
    with pytest.raises(ValueError, match="router 'gshard_top2' samples in training and needs rng"):
        routing.route(RouterConfig(name="gshard_top2", num_experts=E), jnp.asarray(logits),
                      train=True)


def test_a_new_router_is_one_kernel_and_one_registration():
    """The README's recipe, end to end through MoeLayer."""
    import flax.linen as nn

    from moejax.layers import MoeLayer
    from moejax.routing import register_router
    from moejax.routing.base import load_balance_loss, token_choice_inputs, token_choice_result

    def lowest_index_route(logits, *, mask, rng, cfg, train, bias=None, segment=None):
        inputs = token_choice_inputs(logits, mask, cfg, train)  # expert 0, weight 1
        expert = jnp.zeros(logits.shape[:2] + (1,), jnp.int32)
        losses = {"load_balance_loss": load_balance_loss(inputs.probs, expert, inputs.mask)}
        ones = jnp.ones(expert.shape)
        return token_choice_result(inputs, expert, ones, ones.astype(bool), losses, cfg)

    register_router("always_zero", lowest_index_route)
    try:
        layer = MoeLayer(RouterConfig(name="always_zero", num_experts=4, eval_capacity_factor=None),
                         d_ff=8, activations=("relu",))
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
        v = nn.unbox(layer.init(jax.random.PRNGKey(1), x))
        y = layer.apply({"params": v["params"]}, x)
        p = v["params"]
        want = np.maximum(np.asarray(x) @ np.asarray(p["wi"][0]), 0) @ np.asarray(p["wo"][0])
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            register_router("always_zero", lowest_index_route)
    finally:
        ROUTERS.pop("always_zero")
    # A kernel of another signature is refused when registered, by name.
    old = lambda logits, *, mask, rng, cfg, train: None
    with pytest.raises(ValueError, match=r"router 'old' kernel .* lacks the keyword\(s\) "
                                         r"bias, segment"):
        register_router("old", old)
    assert "old" not in ROUTERS
    register_router("open", lambda logits, **kwargs: None)  # **kwargs takes them all
    ROUTERS.pop("open")


@pytest.mark.parametrize("score_fn,groups,topk_groups,k,scaling,with_bias", [
    ("sigmoid", 1, None, 2, 1.0, False), ("sigmoid", 3, 1, 2, 2.5, False),
    ("sigmoid", 3, 2, 3, 1.0, True), ("softmax", 2, 1, 2, 1.0, True),
    ("sigmoid", 6, 2, 2, 1.0, True), ("sqrtsoftplus", 1, None, 2, 1.0, False),
    ("sqrtsoftplus", 3, 2, 3, 1.5, True)])
def test_deepseek_routing_matches_reference(logits, mask, score_fn, groups, topk_groups, k,
                                            scaling, with_bias):
    bias = np.linspace(-0.3, 0.4, E).astype(np.float32) if with_bias else None
    cfg = RouterConfig("top_k", num_experts=E, k=k, score_fn=score_fn, expert_groups=groups,
                       topk_groups=topk_groups, routed_scaling=scaling, eval_capacity_factor=1.0)
    r = routing.route(cfg, jnp.asarray(logits), mask=jnp.asarray(mask),
                      bias=None if bias is None else jnp.asarray(bias))
    choices = ref.deepseek_choices(logits, k, score_fn, bias, groups, topk_groups, scaling)
    assert_same(as_dict(r), ref.claim_places(choices, mask, ref.capacity(T, E, k, 1.0)))
    if score_fn != "softmax":
        # The balance loss's P_e are the normalised per-expert scores (DeepSeek-V3).
        s = {"sigmoid": ref.sigmoid, "sqrtsoftplus": ref.sqrtsoftplus}[score_fn](logits)
        picked = [[[e for e, _ in row] for row in group] for group in choices]
        want = ref.load_balancing_loss(s / s.sum(-1, keepdims=True), picked, mask)
        assert float(r.metrics["load_balance_loss"]) == pytest.approx(want, rel=1e-5)


def test_sqrtsoftplus_scores_keep_gradients_finite_at_extreme_logits():
    """sqrt(softplus(x)) has an infinite slope where softplus underflows to 0;
    the router's gradient stays finite there, and equals the analytic one,
    sigmoid(x) / (2 sqrt(softplus(x))), at ordinary logits."""
    cfg = RouterConfig("top_k", num_experts=4, k=2, score_fn="sqrtsoftplus",
                       capacity_factor=None, eval_capacity_factor=None)
    x = jnp.asarray([[[-200.0, -90.0, 0.5, 300.0], [0.1, -0.2, 0.3, 1.0]]])

    def total_weight_on_expert_2(lg):
        r = routing.route(cfg, lg)
        return jnp.sum(jnp.where(r.valid & (r.expert == 2), r.weight, 0.0))

    g = jax.grad(total_weight_on_expert_2)(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    # Second token: experts 3 and 2 chosen; d w_2 / d x_2 from the quotient rule.
    s = ref.sqrtsoftplus(np.asarray(x[0, 1]))
    ds = ref.sigmoid(np.asarray(x[0, 1], np.float64)) / (2 * s)
    want = ds[2] * s[3] / (s[2] + s[3]) ** 2
    assert float(g[0, 1, 2]) == pytest.approx(want, rel=1e-4)


def test_selection_bias_moves_choices_not_weights(logits):
    bias = jnp.zeros(E).at[3].set(100.0)
    cfg = RouterConfig("top_k", num_experts=E, k=2, score_fn="sigmoid", capacity_factor=None,
                       eval_capacity_factor=None)
    plain = as_dict(routing.route(cfg, jnp.asarray(logits)))
    biased = as_dict(routing.route(cfg, jnp.asarray(logits), bias=bias))
    every_token = {(g, t) for g in range(G) for t in range(T)}
    assert {(g, t) for (g, t, e) in biased if e == 3} == every_token
    s = ref.sigmoid(logits)
    for (g, t, e), (_, w) in biased.items():
        other = next(o for (gg, tt, o) in biased if (gg, tt) == (g, t) and o != e)
        assert w == pytest.approx(s[g, t, e] / (s[g, t, e] + s[g, t, other]), rel=1e-5)
    assert plain != biased
    with pytest.raises(ValueError, match="router 'gshard_top2' takes no selection bias"):
        routing.route(RouterConfig("gshard_top2", num_experts=E), jnp.asarray(logits), bias=bias)


def test_balance_diagnostics_hand_computed():
    # Every token prefers expert 0: one busy expert, E - 1 dead ones.
    onehot = np.full((2, 8, 4), -5.0, np.float32)
    onehot[..., 0] = 5.0
    cfg = RouterConfig("top_k", num_experts=4, k=1, eval_capacity_factor=None)
    m = routing.route(cfg, jnp.asarray(onehot)).metrics
    assert float(m["max_violation"]) == pytest.approx(3.0)
    assert float(m["dead_experts"]) == pytest.approx(0.75)
    # Token t prefers expert t % 4: perfectly balanced.
    cyclic = np.full((2, 8, 4), -5.0, np.float32)
    cyclic[:, np.arange(8), np.arange(8) % 4] = 5.0
    m = routing.route(cfg, jnp.asarray(cyclic)).metrics
    assert float(m["max_violation"]) == pytest.approx(0.0, abs=1e-6)
    assert float(m["dead_experts"]) == 0.0


@pytest.mark.parametrize("kw,message", [
    (dict(score_fn="tanh"),
     r"score_fn must be one of \('softmax', 'sigmoid', 'sqrtsoftplus'\), got 'tanh'"),
    (dict(expert_groups=4), "expert_groups must be >= 1 and divide num_experts=6, got 4"),
    (dict(expert_groups=3, topk_groups=4), r"topk_groups must be in \[1, expert_groups=3\], got 4"),
    (dict(expert_groups=3, topk_groups=1, k=3),
     "k=3 exceeds the 2 experts that topk_groups=1 of expert_groups=3 hold"),
    (dict(routed_scaling=0.0), "routed_scaling must be > 0, got 0.0"),
    (dict(bias_update_rate=-1e-3), r"bias_update_rate must be >= 0 \(0 = off\), got -0.001"),
    (dict(name="expert_choice", bias_update_rate=1e-3),
     "router 'expert_choice' does not read bias_update_rate=0.001"),
    (dict(name="gshard_top2", score_fn="sigmoid"),
     "router 'gshard_top2' does not read score_fn='sigmoid'; routers that do: frozen, switch, "
     "top_k, xmoe"),
])
def test_deepseek_options_bad_input(kw, message):
    with pytest.raises(ValueError, match=message):
        RouterConfig(**{"name": "top_k", "num_experts": 6, **kw})
