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
from collections.abc import Sequence

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
          evidence: str = "", part: str | None = None) -> dict:
    """One results-schema claim: {"claim", "verdict", "evidence"}, plus
    "part" when the experiment has one precondition per part (task)."""
    lo, hi = diff["ci95"]
    note = f"paired diff {diff['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] (95% CI, n={diff['n']})"
    out = {"claim": text, "verdict": verdict(precondition_passed, diff, claimed_sign),
           "evidence": f"{note}; {evidence}" if evidence else note}
    return out if part is None else {**out, "part": part}


def precondition_line(pre: dict, label: str = "") -> str:
    """The markdown sentence every table states its precondition in."""
    z = -pre["diff"] / pre["se"] if pre["se"] > 0 else float("inf")
    return (f"**Precondition{f' ({label})' if label else ''}** (MoE beats dense on "
            f"{pre['metric']} by >= {PRECONDITION_SE:g} paired SE): "
            f"{'passed' if pre['passed'] else 'failed'}, MoE - dense {pre['diff']:+.4f} "
            f"[{pre['ci95'][0]:+.4f}, {pre['ci95'][1]:+.4f}], {z:.1f} SE.")


def claims_table(claims: list[dict]) -> str:
    rows = ["| claim | verdict | evidence |", "|---|---|---|"]
    rows += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in claims]
    return "\n".join(rows) + "\n"


def fmt_ci(d: dict, digits: int = 3, sign: bool = True) -> str:
    """'mean [lo, hi]' of a `paired` (signed) or `mean_ci` (sign=False) result."""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    lo, hi = d["ci95"]
    return f"{f.format(d['mean'])} [{f.format(lo)}, {f.format(hi)}]"


PRECONDITION_KEYS = ("metric", "moe", "dense", "diff", "ci95", "passed")


def check_schema(results: dict) -> None:
    """Every experiment's results.json: "precondition" with PRECONDITION_KEYS
    (or {part: such an entry} for an experiment with several tasks) and
    "claims", a list of {"claim", "verdict", "evidence"} (+ "part", naming
    its precondition, when there are several) whose verdicts are VERDICTS,
    "inconclusive" wherever their precondition failed."""
    pre = results.get("precondition")
    if isinstance(pre, dict) and pre and all(isinstance(v, dict) for v in pre.values()):
        parts = pre
    else:
        parts = {None: pre}
    for part, entry in parts.items():
        if not isinstance(entry, dict) or any(k not in entry for k in PRECONDITION_KEYS):
            raise ValueError(f"results need 'precondition'{f'[{part!r}]' if part else ''} with "
                             f"keys {PRECONDITION_KEYS}, got {entry!r}")
    for c in results.get("claims", None) or ():
        part = c.get("part")
        if set(c) - {"part"} != {"claim", "verdict", "evidence"} or c["verdict"] not in VERDICTS:
            raise ValueError(f"a claim needs claim/verdict/evidence with a verdict in {VERDICTS}, "
                             f"got {c!r}")
        if part not in parts:
            raise ValueError(f"claim {c['claim']!r} names part {part!r}; the preconditions are "
                             f"for {sorted(map(str, parts))}")
        if not parts[part]["passed"] and c["verdict"] != "inconclusive":
            raise ValueError(f"precondition failed, so claim {c['claim']!r} must be "
                             f"'inconclusive', not {c['verdict']!r}")
    if not results.get("claims"):
        raise ValueError("results need a non-empty 'claims' list")
