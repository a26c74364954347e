"""optax optimizer and learning-rate schedule from OptimizerConfig."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.layers import ROUTER_PARAMS


def schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = max(cfg.warmup_steps, 1)
    if cfg.schedule == "rsqrt":  # T5: constant lr/sqrt(warmup) during warmup, then rsqrt decay
        return lambda step: cfg.learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, warmup)))
    warm = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    if cfg.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(cfg.learning_rate)], [warmup])
    if cfg.schedule == "wsd":  # warmup, stable, then linear decay to 0 over cooldown_steps
        cool_from = max(total_steps - cfg.cooldown_steps, warmup)
        cool = optax.linear_schedule(cfg.learning_rate, 0.0, max(total_steps - cool_from, 1))
        return optax.join_schedules(
            [warm, optax.constant_schedule(cfg.learning_rate), cool], [warmup, cool_from])
    decay = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - warmup, 1))
    return optax.join_schedules([warm, decay], [warmup])


def frozen_labels(params, freeze_router: bool, freeze_experts: bool):
    """'frozen' / 'trained' per param. Experts are the 3-D [E, ...] FFN
    kernels of MoE layers; the router is every ROUTER_PARAMS entry."""

    def label(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        is_router = name in ROUTER_PARAMS
        is_expert = leaf.ndim == 3 and (name == "wo" or name.startswith("wi"))
        return "frozen" if (freeze_router and is_router) or (freeze_experts and is_expert) \
            else "trained"

    return jax.tree_util.tree_map_with_path(label, params)


def optimizer(cfg, total_steps: int, freeze_router: bool = False,
              freeze_experts: bool = False) -> optax.GradientTransformation:
    lr = schedule(cfg, total_steps)
    if cfg.name == "adafactor":
        # T5 defaults: factored second moments, no momentum, updates clipped
        # to RMS 1 and scaled by the parameter RMS.
        opt = optax.adafactor(learning_rate=lr, decay_rate=0.8, clipping_threshold=1.0,
                              multiply_by_parameter_scale=True, momentum=None,
                              weight_decay_rate=cfg.weight_decay or None)
    else:
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if freeze_router or freeze_experts:
        opt = optax.multi_transform(
            {"trained": opt, "frozen": optax.set_to_zero()},
            lambda params: frozen_labels(params, freeze_router, freeze_experts))
    return opt
