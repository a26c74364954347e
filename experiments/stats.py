"""Statistics every experiment shares: paired differences over seeds, 95%
intervals, the precondition, and the verdict rule.

Paired seeds: seed s of every arm uses the same data order and (where the
param trees agree) the same init, so arms are compared through the per-seed
differences, whose spread excludes the seed-to-seed variation they share.

The verdict rule (one for every experiment):
  precondition failed                   -> "inconclusive" (experts do not pay
                                           off, so no router claim can show)
  the claim's 95% interval excludes 0   -> "reproduced"
    on the claimed side
  the mean is on the claimed side, the  -> "partly"
    interval includes 0
  otherwise                             -> "not reproduced"
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive")
# The precondition: MoE beats dense by at least this many paired standard errors.
PRECONDITION_SE = 3.0


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """The mean of a[s] - b[s] over seeds s with its standard error, a 95%
    t interval and the number of standard errors it lies from 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired comparison needs two equal-length lists of >= 2 seeds, got "
                         f"{len(a)} and {len(b)}")
    d = a - b
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    half = float(stats.t.ppf(0.975, len(d) - 1) * se)
    if se > 0:
        z = mean / se
    else:  # identical differences on every seed
        z = math.copysign(math.inf, mean) if mean else 0.0
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half], "z": z, "n": len(d)}


def mean_ci(values: Sequence[float]) -> dict:
    """Mean with a 95% t interval (one arm's own spread over seeds)."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))) \
        if len(v) > 1 else math.nan
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(v)}


def precondition(metric: str, moe: Sequence[float], dense: Sequence[float],
                 lower_is_better: bool = True) -> dict:
    """Experts pay off: MoE beats dense (equal active FLOPs) on `metric` by
    >= PRECONDITION_SE paired standard errors. The results-schema entry:
    {"metric", "moe", "dense", "diff" (moe - dense, mean over seeds),
    "ci95", "se", "passed"}."""
    d = paired(moe, dense)
    better = -d["z"] if lower_is_better else d["z"]
    return {"metric": metric, "moe": float(np.mean(moe)), "dense": float(np.mean(dense)),
            "diff": d["mean"], "ci95": d["ci95"], "se": d["se"],
            "passed": bool(better >= PRECONDITION_SE)}


def verdict(precondition_passed: bool, diff: dict, claimed_sign: int = -1) -> str:
    """The shared rule (module docstring). diff: `paired(...)` of the claim's
    comparison; claimed_sign: -1 when the claim is that the difference is
    negative (e.g. 'arm A reaches a lower loss than B': loss_A - loss_B < 0)."""
    if not precondition_passed:
        return "inconclusive"
    lo, hi = (s * claimed_sign for s in diff["ci95"])
    if min(lo, hi) > 0:
        return "reproduced"
    if diff["mean"] * claimed_sign > 0:
        return "partly"
    return "not reproduced"


def claim(text: str, precondition_passed: bool, diff: dict, claimed_sign: int = -1,
          evidence: str = "") -> dict:
    """One results-schema claim: {"claim", "verdict", "evidence"}."""
    lo, hi = diff["ci95"]
    note = f"paired diff {diff['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] (95% CI, n={diff['n']})"
    return {"claim": text, "verdict": verdict(precondition_passed, diff, claimed_sign),
            "evidence": f"{note}; {evidence}" if evidence else note}


def fmt_ci(d: dict, digits: int = 3, sign: bool = True) -> str:
    """'mean [lo, hi]' of a `paired` (signed) or `mean_ci` (sign=False) result."""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    lo, hi = d["ci95"]
    return f"{f.format(d['mean'])} [{f.format(lo)}, {f.format(hi)}]"


PRECONDITION_KEYS = ("metric", "moe", "dense", "diff", "ci95", "passed")


def check_schema(results: dict) -> None:
    """Every experiment's results.json: "precondition" with PRECONDITION_KEYS
    and "claims", a list of {"claim", "verdict", "evidence"} whose verdicts
    are VERDICTS, "inconclusive" wherever the precondition failed."""
    pre = results.get("precondition")
    if not isinstance(pre, dict) or any(k not in pre for k in PRECONDITION_KEYS):
        raise ValueError(f"results need 'precondition' with keys {PRECONDITION_KEYS}, got {pre!r}")
    for c in results.get("claims", None) or ():
        if set(c) != {"claim", "verdict", "evidence"} or c["verdict"] not in VERDICTS:
            raise ValueError(f"a claim needs claim/verdict/evidence with a verdict in {VERDICTS}, "
                             f"got {c!r}")
        if not pre["passed"] and c["verdict"] != "inconclusive":
            raise ValueError(f"precondition failed, so claim {c['claim']!r} must be "
                             f"'inconclusive', not {c['verdict']!r}")
    if not results.get("claims"):
        raise ValueError("results need a non-empty 'claims' list")
