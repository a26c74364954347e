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
    """choices[g][t] = list of (expert, weight) in preference order (expert
    None: a null expert, which keeps its rank but takes no place).
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
                if e is None:  # a null expert: chosen, but claims no place
                    continue
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


def ec_cap_assignment(probs, mask, cap, max_per_token, entropy_rel, iterations):
    """EC-CAP (Zhou et al. 2022, sec. 3.3): the entropic solution of
    max <S, A> + lam H(A) s.t. row sums (per expert) = C, column sums (per
    token) <= b, 0 <= A <= 1, by Dykstra's algorithm with KL projections in
    the probability domain (float64, explicit corrections per set), then
    each expert's top-C tokens by A and each token's b highest-S experts.
    probs: [G, T, E]. Returns {(g, t, e): weight = S[t, e]}."""
    kept = {}
    for g, group in enumerate(probs):
        real = np.nonzero(mask[g])[0]
        s = group[real].T.astype(np.float64)  # [E, T_real]
        lam = entropy_rel * s.std() + 1e-6
        a = np.exp((s - s.max()) / lam)
        c = min(cap, len(real))
        q = [np.ones_like(a) for _ in range(3)]
        for _ in range(iterations):
            for i in range(3):
                shifted = a * q[i]
                if i == 0:
                    new = shifted * (c / shifted.sum(1, keepdims=True))
                elif i == 1:
                    col = shifted.sum(0, keepdims=True)
                    new = shifted * np.minimum(1.0, max_per_token / col)
                else:
                    new = np.minimum(shifted, 1.0)
                q[i] = shifted / new
                a = new
        chosen = {}
        for e in range(a.shape[0]):
            for j in np.argsort(-a[e], kind="stable")[:c]:
                chosen.setdefault(int(real[j]), []).append(e)
        for t, experts in chosen.items():
            for e in sorted(experts, key=lambda e: (-group[t, e], e))[:max_per_token]:
                kept[(g, t, e)] = float(group[t, e])
    return kept


def moesart_expected_weights(p, k, weighting):
    """E[w_e] of MOESART's sampled mixture, by enumerating every ordered
    sample of k distinct experts (sequential sampling without replacement
    from p) and, for 'small_random', every choice of the expert that keeps
    its logit. p: [E]. Written from the authors' gate: adjusted logits
    a_j = o_j for the kept j, a_i = o_i - log((k-1) p_i) for the others
    ('small_random'), a_i = o_i - log(k p_i) for all ('zero'); weights =
    softmax of a over the sample."""
    import itertools

    o = np.log(p)
    expected = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for e in seq:
            prob *= p[e] / left
            left -= p[e]
        keeps = [None] if weighting != "small_random" else list(seq)
        for j in keeps:
            if weighting == "zero":
                a = np.array([o[i] - np.log(k * p[i]) for i in seq])
            elif weighting == "small_random":
                a = np.array([o[i] if i == j else o[i] - np.log((k - 1) * p[i]) for i in seq])
            else:  # renormalized
                a = np.array([o[i] for i in seq])
            w = np.exp(a - a.max())
            w /= w.sum()
            for i, wi in zip(seq, w):
                expected[i] += prob * wi / len(keeps)
    return expected


def load_balancing_loss(probs, expert_choices, mask):
    """flaxformer's `_load_balancing_loss` with a token mask: E^2 * mean over
    groups and experts of (fraction of tokens that chose e, any rank) * (mean
    p_e). expert_choices[g][t]: the experts token t selected."""
    g_, t_, e_ = probs.shape
    out = 0.0
    for g in range(g_):
        real = [t for t in range(t_) if mask[g][t]]
        f = np.zeros(e_)
        for t in real:
            for e in set(expert_choices[g][t]):
                f[e] += 1 / len(real)
        out += e_ * np.sum(f * probs[g, real].mean(0)) / g_
    return out


def vmoe_losses(logits, noisy_logits, k, noise_std):
    """V-MoE's importance and load losses (Riquelme et al. 2021 appendix,
    after Shazeer et al. 2017), averaged over groups, without padding."""
    from scipy.stats import norm

    imp, load = 0.0, 0.0
    for lg, nz in zip(logits, noisy_logits):
        importance = softmax(lg).sum(0)
        imp += (importance.std() / importance.mean()) ** 2 / len(logits)
        threshold = np.sort(nz, axis=-1)[:, -k][:, None]
        p = (1 - norm.cdf((threshold - lg) / noise_std)).mean(0)
        load += (p.std() / p.mean()) ** 2 / len(logits)
    return imp, load


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sqrtsoftplus(x):
    """DeepSeek-V4's expert score sqrt(log(1 + e^x)), written as the released
    inference code's `F.softplus(logits).sqrt()`, in float64."""
    x = np.asarray(x, np.float64)
    return np.sqrt(np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))))


def deepseek_choices(logits, k, score_fn="sigmoid", bias=None, groups=1, topk_groups=None,
                     scaling=1.0, normalize=False):
    """DeepSeek-V3 routing, token by token: scores s = sigmoid(logits) (or
    sqrtsoftplus, DeepSeek-V4's; or softmax); the experts are ranked by
    s + bias; with groups, only experts of the topk_groups groups with the
    largest sum of their two best (s + bias) stay eligible; weights are the
    chosen *unbiased* scores, normalised to sum to 1 for per-expert scores
    (or when `normalize`), times `scaling`. Returns choices[g][t] =
    [(expert, weight), ...] in rank order."""
    scores = {"sigmoid": sigmoid, "sqrtsoftplus": sqrtsoftplus,
              "softmax": softmax}[score_fn](logits)
    e_ = logits.shape[-1]
    bias = np.zeros(e_) if bias is None else np.asarray(bias)
    size = e_ // groups
    out = []
    for group in scores:
        rows = []
        for s in group:
            b = s + bias
            ranked_groups = sorted(range(groups), key=lambda j: -sum(
                sorted(b[j * size:(j + 1) * size], reverse=True)[:2]))
            allowed = {e for j in ranked_groups[:topk_groups or groups]
                       for e in range(j * size, (j + 1) * size)}
            idx = sorted(allowed, key=lambda e: -b[e])[:k]
            w = np.array([s[e] for e in idx])
            if score_fn != "softmax" or normalize:
                w = w / w.sum()
            rows.append(list(zip(idx, (w * scaling).tolist())))
        out.append(rows)
    return out


def quantile_balanced_bias(scores, mask, bias, k, ema=0.0):
    """Quantile balancing as the Kimi K3 report (sec. 2.3.3, app. D)
    describes it and torchtitan PR #4577 implements it (with exact
    quantiles instead of its 1000-bin histogram): every real token's
    cutoff is its (k+1)-th largest biased score; expert e's bias is the
    k/E quantile of (cutoff - score_e) over the real tokens, mean-centred,
    then mixed with the old bias by `ema`."""
    e_ = scores.shape[-1]
    required = []
    for g in range(scores.shape[0]):
        for t in range(scores.shape[1]):
            if mask[g][t]:
                cutoff = sorted(scores[g, t] + bias, reverse=True)[k]
                required.append(cutoff - scores[g, t])
    solved = np.quantile(np.array(required), k / e_, axis=0)
    solved = solved - solved.mean()
    return ema * np.asarray(bias) + (1 - ema) * solved


def null_expert_choices(probs, k, num_experts, normalize):
    """MoE++ (Jin et al. 2024) with zero-computation experts: `top_k_choices`
    over all columns (the real experts first, then the null ones); a null
    choice is (None, weight): it keeps its rank and computes nothing."""
    return [[[(e if e < num_experts else None, w) for e, w in row] for row in group]
            for group in top_k_choices(probs, k, normalize)]


def relu_routing(logits, mask, k):
    """ReMoE (Wang et al. 2024, eq. 4, and the L1 penalty of the authors'
    Megatron fork, thu-ml/ReMoE: Megatron's Switch balance loss applied to
    the ReLU gates, E / (T^2 k) * sum_e (sum_t R_te) * (#t with R_te > 0),
    here per group over its real tokens, averaged over groups).
    Returns (choices[g][t] = [(expert, gate), ...] by descending gate,
    l1, active fraction of experts over real tokens)."""
    gates = np.maximum(logits, 0.0)
    e_ = logits.shape[-1]
    choices, l1, active = [], 0.0, []
    for g in range(logits.shape[0]):
        rows = []
        for t in range(logits.shape[1]):
            order = np.argsort(-gates[g, t], kind="stable")
            rows.append([(int(e), float(gates[g, t, e])) for e in order if gates[g, t, e] > 0])
        choices.append(rows)
        real = [t for t in range(logits.shape[1]) if mask[g][t]]
        r = gates[g, real]
        count = (r > 0).sum(0)
        l1 += e_ / (len(real) ** 2 * k) * np.sum(r.sum(0) * count) / logits.shape[0]
        active += [float((r[i] > 0).mean()) for i in range(len(real))]
    return choices, l1, float(np.mean(active))
