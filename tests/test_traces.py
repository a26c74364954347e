"""Routing traces (--config.trace_routing_every_steps) and the report drawn
from them (scripts/routing_report.py)."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.harness.testbed import testbed_config, testbed_moe, testbed_router
from moejax.train.traces import read_traces
from moejax.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import routing_report  # noqa: E402


def test_traces_record_every_layer_and_the_report_draws_them(tmp_path):
    """A testbed run (markov corpus: documents with domains) with null
    experts traces its fixed batch at steps 0, 10 and 20: per layer, real
    tokens get at most k experts with weights summing to at most 1 (less
    where a null expert took a share), padding gets none; the report
    writes its four figures and a table naming every layer."""
    cfg = testbed_config("smoke", 0, steps=20, evals=1)
    cfg = testbed_moe(cfg, testbed_router(num_null_experts=2), d_ff=64)
    cfg = dataclasses.replace(cfg, trace_routing_every_steps=10)
    workdir = str(tmp_path / "run")
    train(cfg, workdir)
    inputs, traces = read_traces(workdir)
    assert sorted(traces) == [0, 10, 20]
    assert set(traces[20]) == {"encoder/layers_0", "decoder/layers_0"}
    assert inputs["domain"].shape == (cfg.batch_size,) and len(inputs["domain_names"]) > 1
    for layer, w in traces[20].items():
        real, _ = routing_report.real_tokens(inputs, layer)
        assert w.shape == (*real.shape, 16)
        chosen = (w > 0).sum(-1)
        assert chosen[real].max() <= 2 and chosen[~real].max(initial=0) == 0
        assert w.sum(-1)[real].max() <= 1 + 1e-3
        assert (chosen[real] < 2).any()  # null experts took some choices
        assert not np.array_equal(w, traces[0][layer])  # routing moved with training
    out = subprocess.run([sys.executable, "scripts/routing_report.py", workdir], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| encoder/layers_0 |" in out.stdout and "| decoder/layers_0 |" in out.stdout
    assert sorted(os.listdir(os.path.join(workdir, "routing_report"))) == [
        "experts_per_token.png", "load.png", "specialisation.png", "stability.png"]


def test_report_statistics_hand_computed():
    """Two traced steps of 4 real tokens (and 1 padding) over 3 experts: load
    shares, first-expert changes, experts-per-token histogram and NMI of a
    routing that follows the domain exactly."""
    inputs = {"encoder_input_tokens": np.array([[5, 6, 0], [7, 8, 0]]),
              "domain": np.array([0, 1])}
    inputs["encoder_input_tokens"][1, 2] = 9  # 5 real tokens
    w0 = np.zeros((2, 3, 3), np.float32)
    w0[0, 0, 0] = w0[0, 1, 0] = 1.0          # domain 0 -> expert 0
    w0[1, 0, 1] = w0[1, 1, 1] = w0[1, 2, 1] = 0.7  # domain 1 -> expert 1
    w0[1, 2, 2] = 0.3                          # second expert of the last token
    w1 = w0.copy()
    w1[0, 1] = [0.0, 0.0, 1.0]                 # one token moves to expert 2
    stats = routing_report.layer_stats(inputs, {0: {"encoder/layers_1": w0},
                                                10: {"encoder/layers_1": w1}})
    s = stats["encoder/layers_1"]
    np.testing.assert_allclose(s["load"][0], [2 / 6, 3 / 6, 1 / 6])
    np.testing.assert_allclose(s["changed"], [1 / 5])
    np.testing.assert_allclose(s["hist"], [0, 4 / 5, 1 / 5, 0])
    assert s["nmi_domain"][0] == pytest.approx(1.0)
    assert s["nmi_domain"][1] < 1.0


def test_report_says_when_there_are_no_traces(tmp_path):
    out = subprocess.run([sys.executable, "scripts/routing_report.py", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no routing traces in" in out.stderr and "trace_routing_every_steps" in out.stderr


def test_a_scanned_model_traces_the_same_routing():
    """With scan_layers the sown weights carry a leading block axis;
    moe_outputs names them per layer, and they equal the unscanned model's
    (same params, restacked)."""
    from model_util import init, run, tiny_config, tokens

    from moejax.layers import MOE_COLLECTION, TRACE_COLLECTION
    from moejax.models import moe_outputs
    from moejax.models.scan import scan_tree

    cfg = tiny_config(encoder_router="top_k", num_encoder_layers=4, num_decoder_layers=2)
    scanned = dataclasses.replace(cfg, scan_layers=True)
    _, params = init(cfg)
    enc, dec = tokens(0, (2, 6), 40), tokens(1, (2, 5), 40)
    traced = {}
    for c, p in ((cfg, params), (scanned, scan_tree(params, {"encoder": 2, "decoder": 2}))):
        _, state = run(init(c)[0], p, enc, dec, mutable=[MOE_COLLECTION, TRACE_COLLECTION])
        traced[c.scan_layers] = moe_outputs(state[TRACE_COLLECTION], c)[1]
    assert sorted(traced[True]) == sorted(traced[False]) == [
        "decoder/layers_1/weights", "encoder/layers_1/weights", "encoder/layers_3/weights"]
    for key, w in traced[False].items():
        assert w.shape == (*(enc if key.startswith("encoder") else dec).shape, 4)
        np.testing.assert_allclose(traced[True][key], w, rtol=1e-5, atol=1e-6)
