"""experiments/harness/stats.py: paired intervals against scipy's paired t-test,
the verdict rule on hand-made cases, and the results schema."""
import math

import pytest
from scipy import stats as sps

from experiments.harness import stats


def test_paired_interval_matches_scipy_paired_t_test():
    a = [2.10, 2.05, 2.20, 2.00, 2.12]
    b = [2.20, 2.11, 2.31, 2.04, 2.25]
    d = stats.paired(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    assert d["mean"] == pytest.approx(sum(diffs) / 5)
    t = sps.ttest_rel(a, b)
    assert d["z"] == pytest.approx(t.statistic)
    ci = t.confidence_interval(0.95)
    assert d["ci95"] == pytest.approx([ci.low, ci.high])
    with pytest.raises(ValueError, match="two equal-length lists of >= 2 seeds"):
        stats.paired([1.0], [2.0])


def test_precondition_needs_three_paired_standard_errors():
    dense = [2.0, 2.1, 1.9]
    clear = stats.precondition("eval_loss", [1.80, 1.91, 1.69], dense)  # diffs -0.2, -0.19, -0.21
    assert clear["passed"] and clear["diff"] == pytest.approx(-0.2)
    noisy = stats.precondition("eval_loss", [1.7, 2.2, 1.9], dense)  # diffs -0.3, +0.1, 0
    assert not noisy["passed"]
    assert set(clear) >= set(stats.PRECONDITION_KEYS)
    worse = stats.precondition("eval_loss", [2.2, 2.31, 2.09], dense)
    assert not worse["passed"]


def test_verdict_rule():
    excludes = {"mean": -0.1, "ci95": [-0.15, -0.05]}
    straddles = {"mean": -0.1, "ci95": [-0.3, 0.1]}
    wrong = {"mean": 0.05, "ci95": [-0.1, 0.2]}
    assert stats.verdict(True, excludes) == "reproduced"
    assert stats.verdict(True, straddles) == "partly"
    assert stats.verdict(True, wrong) == "not reproduced"
    assert stats.verdict(False, excludes) == "inconclusive"
    assert stats.verdict(True, {"mean": 0.1, "ci95": [0.05, 0.15]}, claimed_sign=+1) == "reproduced"


def test_results_schema_is_checked():
    pre = stats.precondition("eval_loss", [1.80, 1.91, 1.69], [2.0, 2.1, 1.9])
    c = stats.claim("A beats B", pre["passed"], stats.paired([1.0, 1.1, 1.2], [1.1, 1.21, 1.3]))
    stats.check_schema({"precondition": pre, "claims": [c]})
    assert c["verdict"] == "reproduced" and "95% CI, n=3" in c["evidence"]
    failed = dict(pre, passed=False)
    with pytest.raises(ValueError, match="must be 'inconclusive'"):
        stats.check_schema({"precondition": failed, "claims": [c]})
    with pytest.raises(ValueError, match="'precondition' with keys"):
        stats.check_schema({"claims": [c]})
    with pytest.raises(ValueError, match="verdict in"):
        stats.check_schema({"precondition": pre, "claims": [dict(c, verdict="maybe")]})
    assert math.isinf(stats.paired([1.0, 2.0], [0.0, 1.0])["z"])


def test_schema_with_one_precondition_per_part():
    good = stats.precondition("mse", [1.0, 1.1, 1.2], [2.0, 2.12, 2.19])
    bad = dict(good, passed=False)
    diff = stats.paired([1.0, 1.1, 1.2], [1.1, 1.21, 1.3])
    ok = stats.claim("A beats B on x", True, diff, part="x")
    assert ok["part"] == "x" and ok["verdict"] == "reproduced"
    stats.check_schema({"precondition": {"x": good, "y": bad},
                        "claims": [ok, stats.claim("A beats B on y", False, diff, part="y")]})
    # A claim is held to its own part's precondition.
    with pytest.raises(ValueError, match="must be 'inconclusive'"):
        stats.check_schema({"precondition": {"x": good, "y": bad},
                            "claims": [dict(ok, part="y")]})
    with pytest.raises(ValueError, match="names part 'z'"):
        stats.check_schema({"precondition": {"x": good}, "claims": [dict(ok, part="z")]})
    line = stats.precondition_line(good, "x")
    assert line.startswith("**Precondition (x)**") and "passed" in line
