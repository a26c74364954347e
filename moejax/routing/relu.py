"""ReLU routing with an adaptive L1 penalty (ReMoE, Wang et al. 2024,
arXiv 2412.14711; the authors' Megatron fork thu-ml/ReMoE)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.base import (
    RoutingResult,
    masked_mean,
    token_choice_inputs,
    token_choice_result,
    z_loss,
)


def validate(cfg) -> None:
    target = cfg.relu_active_fraction
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"relu_active_fraction (the target fraction of experts active per "
                         f"token, 1 - ReMoE's target sparsity) must be in (0, 1], got {target}")
    if not cfg.relu_l1_init > 0:
        raise ValueError(f"relu_l1_init must be > 0, got {cfg.relu_l1_init}")
    if not cfg.relu_l1_growth > 1:
        raise ValueError(f"relu_l1_growth must be > 1, got {cfg.relu_l1_growth}")
    if cfg.score_fn != "softmax":
        raise ValueError(f"router 'relu' scores with ReLU; score_fn must stay 'softmax' "
                         f"(unused), got {cfg.score_fn!r}")


def target_active_fraction(cfg) -> float:
    """The fraction of the E experts a token should use on average."""
    if cfg.relu_active_fraction is None:
        return cfg.k / cfg.num_experts
    return cfg.relu_active_fraction


def relu_route(logits, *, mask, rng, cfg, train, bias=None, segment=None) -> RoutingResult:
    """Every expert with a positive logit is active, weighted by the logit:
    gates R = ReLU(logits), no top-k, no normalisation (ReMoE eq. 4), so a
    token uses 0..E experts (at most cfg.max_experts_per_token) and the
    router is differentiable everywhere but at 0.

    logits: float [G, T, E]; mask: bool [G, T]. Capacity is sized for cfg.k
    experts per token on average (use capacity_factor=None for no drops).
    The sparsity is steered by an L1 penalty on R whose coefficient is
    state the layer keeps (moejax.routing.state): the kernel reports the
    unweighted penalty as metric `relu_l1_loss`, the layer adds
    coefficient * it to the aux loss. The penalty is ReMoE's
    load-balancing L1, (E / k) * sum_e f_e * mean_t R_te with f_e the
    fraction of real tokens for which expert e is active (the authors' code
    computes it with Megatron's Switch balance loss on R; per routing
    group here, as every group-scope loss). Aux losses: the router
    z-loss. Metric `active_fraction`: active experts over E, the quantity
    the coefficient steers. `rng`, `bias` and `segment` are unused.
    """
    del rng, bias, segment
    inputs = token_choice_inputs(logits, mask, cfg, train)
    gates = jax.nn.relu(inputs.logits)
    max_k = cfg.max_experts_per_token or cfg.num_experts
    weight, expert = jax.lax.top_k(gates, max_k)
    request = weight > 0
    active = (gates > 0).astype(jnp.float32)
    m = inputs.mask[..., None]
    f = masked_mean(active, m, axis=1)  # [G, E]
    p = masked_mean(gates, m, axis=1)
    l1 = jnp.mean(cfg.num_experts / cfg.k * jnp.sum(f * p, axis=-1))
    extra = {"relu_l1_loss": l1,
             "active_fraction": masked_mean(jnp.mean(active, axis=-1), inputs.mask)}
    # The metrics' entropy and priority read a distribution: the gates'.
    inputs = inputs.replace(probs=gates / jnp.maximum(jnp.sum(gates, -1, keepdims=True), 1e-9))
    return token_choice_result(inputs, expert, weight, request,
                               {"z_loss": z_loss(inputs.logits, inputs.mask)}, cfg,
                               extra_metrics=extra)


def update_l1_coefficient(coefficient, active_fraction, cfg):
    """ReMoE's controller (eq. 7): lambda *= growth ** sign(active - target),
    i.e. up when more experts are active than the target (sparsity below
    target), down when fewer. active_fraction: the step's metric, over the
    global batch. The authors share one coefficient across layers, from
    the layers' mean sparsity; here every layer steers its own."""
    direction = jnp.sign(jax.lax.stop_gradient(active_fraction) - target_active_fraction(cfg))
    return coefficient * jnp.power(jnp.float32(cfg.relu_l1_growth), direction)
