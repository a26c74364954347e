"""optax optimizer and learning-rate schedule from OptimizerConfig."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = max(cfg.warmup_steps, 1)
    if cfg.schedule == "rsqrt":  # T5: constant lr/sqrt(warmup) during warmup, then rsqrt decay
        return lambda step: cfg.learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, warmup)))
    warm = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    if cfg.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(cfg.learning_rate)], [warmup])
    decay = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - warmup, 1))
    return optax.join_schedules([warm, decay], [warmup])


def optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
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
    return opt
