"""Plain numpy/python reference implementations, written independently of
moejax (explicit loops, numpy sorting) to test the jax kernels against."""
from __future__ import annotations

import math

import numpy as np


def softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def capacity(tokens, experts, k, factor):
    return min(tokens, math.ceil(factor * tokens * k / experts))


def claim_places(choices, mask, cap, priority=None):
    """choices[g][t] = list of (expert, weight) in preference order.
    Returns {(g, t, e): (slot, weight)} of the kept assignments: all first
    choices claim places before any second choice; tokens go in position
    order or by descending priority (stable)."""
    kept = {}
    for g, group in enumerate(choices):
        tokens = range(len(group))
        order = list(tokens) if priority is None else sorted(tokens, key=lambda t: -priority[g][t])
        used = {}
        depth = max((len(c) for c in group), default=0)
        for rank in range(depth):
            for t in order:
                if not mask[g][t] or rank >= len(group[t]):
                    continue
                e, w = group[t][rank]
                if used.get(e, 0) < cap:
                    kept[(g, t, e)] = (used.get(e, 0), w)
                    used[e] = used.get(e, 0) + 1
    return kept


def top_k_choices(probs, k, normalize):
    out = []
    for group in probs:
        rows = []
        for p in group:
            idx = np.argsort(-p, kind="stable")[:k]
            w = p[idx] / (p[idx].sum() if normalize else 1.0)
            rows.append(list(zip(idx.tolist(), w.tolist())))
        out.append(rows)
    return out


def top_p_choices(probs, threshold):
    """Smallest prefix of the descending-sorted experts whose mass >= threshold."""
    out = []
    for group in probs:
        rows = []
        for p in group:
            idx = np.argsort(-p, kind="stable")
            chosen, total = [], 0.0
            for e in idx:
                chosen.append((int(e), float(p[e])))
                total += p[e]
                if total >= threshold:
                    break
            rows.append(chosen)
        out.append(rows)
    return out


def expert_choice(probs, mask, cap, max_per_token=None):
    """{(g, t, e): weight}: each expert takes its top-`cap` real tokens."""
    kept = {}
    for g, group in enumerate(probs):
        scores = np.where(mask[g][:, None], group, -1.0)
        for e in range(group.shape[1]):
            for t in np.argsort(-scores[:, e], kind="stable")[:cap]:
                if mask[g][t]:
                    kept[(g, int(t), e)] = float(group[t, e])
        if max_per_token is not None:
            for t in range(group.shape[0]):
                mine = sorted((e for (gg, tt, e) in kept if gg == g and tt == t),
                              key=lambda e: (-group[t, e], e))
                for e in mine[max_per_token:]:
                    del kept[(g, t, e)]
    return kept


def moe_output(x, kept, experts):
    """sum over kept (g, t, e) of weight * expert_e(x[g, t])."""
    y = np.zeros_like(x)
    for (g, t, e), w in kept.items():
        y[g, t] += w * experts(e, x[g, t])
    return y


def gated_gelu_expert(params):
    def gelu(v):
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))

    def run(e, v):
        h = gelu(v @ params["wi_0"][e]) * (v @ params["wi_1"][e])
        return h @ params["wo"][e]
    return run
