"""Token-choice top-k routers: Switch top-1, general top-k, V-MoE."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    balance_losses,
    masked_mean,
    require_rng,
    token_choice_inputs,
    token_choice_result,
    z_loss,
)


def top_k_route(logits, *, mask, rng, cfg, train, bias=None, segment=None) -> RoutingResult:
    """Each token takes its k best-scored experts (Switch when k = 1).

    logits: float [G, T, E]; mask: bool [G, T] (False = padding); bias:
    float [E] or None, added to the scores for selection only (auxiliary-
    loss-free balancing, Wang et al. 2024), never to the weights.
    Scores are softmax probabilities or per-expert scores: cfg.score_fn =
    'sigmoid' (DeepSeek-V3) or 'sqrtsoftplus', sqrt(softplus(logit))
    (DeepSeek-V4, as MaxText's and the released inference code's
    `scoring_func`). With cfg.expert_groups > 1 a token
    picks among the experts of its cfg.topk_groups best groups only
    (`limit_to_groups`). Weights are the chosen scores, renormalised over
    the k when cfg.normalize_weights (always for per-expert scores), times
    cfg.routed_scaling. Places at an expert go to first choices before
    second ones, by position or, with cfg.batch_prioritized, by descending
    max probability. Aux losses: load balance over every chosen expert
    (flaxformer's `_load_balancing_loss`; with sigmoid scores P_e is the
    mean normalised score, as DeepSeek-V3's balance loss has it) and the
    router z-loss; the balance loss per `segment` tokens (cfg.balance_scope,
    computed by `route`). `rng` is unused (Switch jitter acts on the
    router's inputs, in the scorer).
    With cfg.num_null_experts = N > 0 (MoE++) logits are [G, T, E + N]:
    the k best of all E + N columns are chosen and weighted as above, and
    a choice of column >= E (a null expert) asks for no expert, so its
    weight multiplies a zero output; metric `null_expert_share`.
    """
    inputs = token_choice_inputs(logits, mask, cfg, train)
    expert = select_experts(inputs.scores, cfg, bias)
    weight = jnp.take_along_axis(inputs.scores, expert, axis=-1)
    losses = balance_losses(inputs.logits, inputs.probs, inputs.mask, expert,
                            segment=segment)
    real = expert < cfg.num_experts
    extra = None
    if cfg.num_null_experts:
        extra = {"null_expert_share": masked_mean(
            1.0 - jnp.mean(real.astype(jnp.float32), axis=-1), inputs.mask)}
    return token_choice_result(inputs, expert, normalize(weight, cfg), real, losses, cfg,
                               extra_metrics=extra)


def select_experts(scores, cfg, bias=None):
    """int32 [G, T, k]: each token's k best experts by scores [G, T, E]
    (+ bias [E]), in descending order, within its best expert groups when
    cfg.expert_groups > 1."""
    choice = scores if bias is None else scores + jax.lax.stop_gradient(bias)
    if cfg.expert_groups > 1:
        choice = limit_to_groups(choice, cfg.expert_groups, cfg.kept_groups)
    return jax.lax.top_k(choice, cfg.k)[1]


def update_selection_bias(bias, expert_load, rate: float):
    """Auxiliary-loss-free balancing (Wang et al. 2024, DeepSeek-V3): the
    bias [E] of every expert busier than the mean falls by `rate`, of every
    idler one rises by `rate`. expert_load: [E] shares of the step's
    assignments over the whole batch (RoutingResult.metrics['expert_load'];
    with a capacity limit, after drops)."""
    load = jax.lax.stop_gradient(expert_load)
    return bias + rate * jnp.sign(jnp.mean(load) - load)


def quantile_balanced_bias(scores, mask, bias, k: int, ema: float = 0.0):
    """Quantile balancing (Kimi K3 report, sec. 2.3.3 and app. D): the
    selection bias [E] that would have given every expert k/E of the
    batch's real tokens, solved from this batch rather than nudged.

    scores: float32 [G, T, E] the selection scores (no bias); mask: bool
    [G, T]; bias: [E] the bias the batch was routed with. A token's cutoff
    c_t is its (k+1)-th best score + bias (the best score not chosen);
    expert e is chosen by the tokens whose c_t - s_te < b_e, so b_e = the
    k/E quantile over real tokens of c_t - s_te (linear interpolation, as
    np.quantile) gives it k/E of them. The solved bias is mean-centred (a
    common shift changes no choice, and the cutoffs move with it, so
    without centring it could drift) and returned as ema * bias + (1 -
    ema) * solved. Every token of the call counts: under jit the arrays
    span the global batch. With no real token the bias is unchanged.
    """
    e = scores.shape[-1]
    scores = jax.lax.stop_gradient(scores).reshape(-1, e)
    mask = mask.reshape(-1)
    cutoff = jax.lax.top_k(scores + bias, k + 1)[0][:, -1]
    required = jnp.where(mask[:, None], cutoff[:, None] - scores, jnp.inf)
    ordered = jnp.sort(required, axis=0)  # real tokens first
    n = jnp.sum(mask)
    position = (k / e) * (jnp.maximum(n, 1) - 1).astype(jnp.float32)
    low = jnp.floor(position).astype(jnp.int32)
    high = jnp.minimum(low + 1, jnp.maximum(n, 1) - 1)
    frac = position - low
    solved = ordered[low] * (1.0 - frac) + ordered[high] * frac
    solved = solved - jnp.mean(solved)
    return jnp.where(n > 0, ema * bias + (1.0 - ema) * solved, bias)


def limit_to_groups(choice, num_groups: int, keep: int):
    """Group-limited routing (DeepSeek-V2/V3): the E experts form
    `num_groups` consecutive groups (an expert-parallel device each, say);
    every token keeps the `keep` groups with the highest sum of their two
    best scores (the best one in groups of one expert) and sees -inf for
    every expert outside them. choice: [G, T, E] -> [G, T, E]."""
    g, t, e = choice.shape
    grouped = choice.reshape(g, t, num_groups, e // num_groups)
    group_score = jnp.sum(jax.lax.top_k(grouped, min(2, e // num_groups))[0], axis=-1)
    kept = jnp.any(jax.nn.one_hot(jax.lax.top_k(group_score, keep)[1], num_groups, dtype=bool),
                   axis=-2)
    return jnp.where(jnp.repeat(kept, e // num_groups, axis=-1), choice, -jnp.inf)


def normalize(weight, cfg):
    """Combine weights [G, T, K]: renormalised to sum to 1 per token when
    cfg.normalize_weights or with per-expert (sigmoid, sqrtsoftplus) scores,
    times cfg.routed_scaling."""
    if cfg.normalize_weights or cfg.score_fn != "softmax":
        weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    return weight * cfg.routed_scaling if cfg.routed_scaling != 1.0 else weight


def cv_squared(x, axis=-1):
    """(std / mean)^2 along `axis`: 0 when all entries are equal."""
    return jnp.square(jnp.std(x, axis=axis) / jnp.maximum(jnp.mean(x, axis=axis), 1e-9))


def importance_loss(probs, mask):
    """V-MoE / Shazeer et al. (2017) importance loss, mean over groups:
    CV^2 of Importance_e = sum over a group's tokens of p_e (noiseless).
    probs: [G, T, E]; mask: bool [G, T]."""
    return jnp.mean(cv_squared(jnp.sum(probs * mask[..., None], axis=1)))


def load_loss(logits, noisy_logits, mask, k: int, noise_std: float):
    """V-MoE load loss, mean over groups: CV^2 of load_e = mean over tokens
    of P(expert e is among the top k under a fresh noise draw) = 1 -
    Phi((threshold - logit_e) / noise_std), threshold being the k-th largest
    noisy logit of the token (as in google-research/vmoe's router).
    logits, noisy_logits: [G, T, E]; mask: bool [G, T]."""
    threshold = jax.lax.top_k(noisy_logits, k)[0][..., -1:]
    p = 1.0 - jax.scipy.stats.norm.cdf((threshold - logits) / noise_std)
    return jnp.mean(cv_squared(masked_mean(p, mask[..., None], axis=1)))


def validate_vmoe(cfg) -> None:
    if cfg.noise_std is not None and cfg.noise_std < 0:
        raise ValueError(f"noise_std must be >= 0 (or None for 1/E), got {cfg.noise_std}")


def validate_xmoe(cfg) -> None:
    if cfg.xmoe_dim < 1 or cfg.xmoe_temperature <= 0:
        raise ValueError(f"xmoe_dim must be >= 1 and xmoe_temperature > 0, got "
                         f"{cfg.xmoe_dim} and {cfg.xmoe_temperature}")


def vmoe_route(logits, *, mask, rng, cfg, train, bias=None, segment=None) -> RoutingResult:
    """V-MoE (Riquelme et al. 2021): top-k of softmax(logits + N(0,
    noise_std^2)) in training (noise_std defaults to 1/E; no noise in
    evaluation), weights = those noisy probabilities, always
    batch-prioritised.

    logits: float [G, T, E]; mask: bool [G, T]. Aux losses (Shazeer et al.
    2017, as V-MoE uses them): `importance_loss` and `load_loss`, each
    weighted by load_balance_weight / 2 (V-MoE's aux = lambda * (L_imp +
    L_load) / 2), and the router z-loss. Without noise (evaluation, or
    noise_std = 0) the load loss has no smooth form and is reported as 0.
    Its losses are per group: `segment` and `bias` are unused.
    """
    noise = 1.0 / cfg.num_experts if cfg.noise_std is None else cfg.noise_std
    inputs = token_choice_inputs(logits, mask, cfg, train)
    routed = inputs.logits
    if train and noise > 0:
        routed = routed + noise * jax.random.normal(require_rng(rng, cfg.name), routed.shape)
        load = load_loss(inputs.logits, routed, inputs.mask, cfg.k, noise)
    else:
        load = jnp.zeros((), jnp.float32)
    noisy_probs = jax.nn.softmax(routed, axis=-1)
    weight, expert = jax.lax.top_k(noisy_probs, cfg.k)
    losses = {"importance_loss": importance_loss(inputs.probs, inputs.mask), "load_loss": load,
              "z_loss": z_loss(inputs.logits, inputs.mask)}
    # Batch priority by the noisy gates V-MoE routes with.
    inputs = inputs.replace(probs=noisy_probs)
    return token_choice_result(inputs, expert, normalize(weight, cfg),
                               jnp.ones(expert.shape, bool), losses, cfg, prioritized=True)
