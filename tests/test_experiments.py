"""The experiments' shared harness (experiments/common.py): curve and task
helpers against hand-computed values, and a short synthetic run."""
import dataclasses
import math

import numpy as np
import pytest

from experiments.common import (ClusterTask, mean_curve, numeric_table, routing_counts, slug,
                                steps_to_reach, t5_config, knowledge_config, knowledge_moe,
                                knowledge_router, train_synthetic, with_moe)
from moejax.routing import RouterConfig


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(10, 5.0), (20, 3.0), (30, 2.0)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(25.0)
    assert steps_to_reach(curve, 3.0) == pytest.approx(20.0)
    assert steps_to_reach(curve, 9.0) == 10
    assert steps_to_reach(curve, 1.0) is None
    assert mean_curve([curve, [(10, 3.0), (20, 1.0), (30, 0.0)]]) == [(10, 4.0), (20, 2.0),
                                                                     (30, 1.0)]
    assert slug("top-1 (Switch)") == "top_1_switch"
    assert numeric_table("arm", ["a", "b"], {"x": [1.0, 0.25], "y": [2, 3]}, 2) == (
        "| arm | a | b |\n|---|---|---|\n| x | 1.00 | 0.25 |\n| y | 2.00 | 3.00 |")


def test_cluster_task_is_seeded_and_clusters_are_separable():
    task = ClusterTask(widths=(4, 4, 4), separation=6.0, noise=0.5)
    x, c, y = task.sample(600, seed=3)
    x2, c2, y2 = task.sample(600, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (600, 16) and y.shape == (600, 4) and set(c.tolist()) == {0, 1, 2}
    centres = np.stack([x[c == k].mean(0) for k in range(3)])
    nearest = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == c).mean() > 0.99


def test_routing_counts_follow_the_top_p_threshold():
    probs = np.array([[[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    router = RouterConfig("top_p", num_experts=4, threshold=0.6, eval_capacity_factor=None)
    # Cumulative sorted probabilities first reach 0.6 after 1, 2 and 3 experts.
    np.testing.assert_array_equal(routing_counts(router, np.log(probs).astype(np.float32)),
                                  [[1, 2, 3]])


def test_with_moe_changes_only_the_named_stack():
    cfg = t5_config("quick", seed=1, steps=40, evals=4)
    assert (cfg.steps, cfg.eval_every_steps, cfg.seed) == (40, 10, 1)
    switch = RouterConfig("switch", num_experts=4)
    out = with_moe(cfg, encoder={"router": switch, "d_ff": 32}, decoder={"interval": 0})
    assert out.model.encoder_moe.router == switch and out.model.encoder_moe.d_ff == 32
    assert out.model.encoder_moe.interval == cfg.model.encoder_moe.interval
    assert out.model.decoder_moe.interval == 0
    assert out.model.decoder_moe.router == cfg.model.decoder_moe.router


def test_synthetic_run_learns_and_reports_routing():
    task = ClusterTask(widths=(8, 8), separation=3.0)
    router = RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None,
                          eval_capacity_factor=None)
    run = train_synthetic(task, router, steps=60, seed=0, group=32, batch_groups=4, snapshots=3)
    assert [s for s, _ in run.loss_curve] == [0, 30, 60]
    assert run.loss_curve[-1][1] < 0.7 * run.loss_curve[0][1]
    assert run.test_loss == pytest.approx(run.loss_curve[-1][1], rel=1e-5)
    # Uncapped top-2: every point gets exactly 2 experts, none dropped.
    assert run.experts_per_token == [2.0] and run.dropped_fraction == [0.0]
    assert np.allclose(run.experts_per_token_per_cluster, 2.0)
    assert len(run.confusion[-1][1]) == 2 and all(
        math.isclose(sum(row), 1.0, rel_tol=1e-6) for row in run.confusion[-1][1])


def test_testbed_arms_differ_only_in_their_ffns_at_equal_active_flops():
    dense = knowledge_config("quick", seed=2)
    moe = knowledge_moe(dense)
    assert dense.data.source == "knowledge" and dense.data.seed == dense.seed == 2
    assert dense.model.encoder_moe.interval == dense.model.decoder_moe.interval == 0
    for stack in (moe.model.encoder_moe, moe.model.decoder_moe):
        assert stack.interval == 1 and stack.router == knowledge_router()
        assert stack.d_ff * stack.router.k == dense.model.d_ff  # active hidden units per token
    assert knowledge_router().capacity_factor is None and knowledge_router().load_balance_weight == 0
    assert dataclasses.replace(moe, model=dense.model) == dense
