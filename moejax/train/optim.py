"""optax optimizer and learning-rate schedule from OptimizerConfig."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from moejax.layers import EXPERT_AXIS, FIXED_ROUTER_AXIS, ROUTER_AXES


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


def frozen_labels(boxed_params, freeze_router: bool = False, freeze_experts: bool = False):
    """'frozen' / 'trained' per param, shaped like the unboxed params, chosen
    by logical axis names (`boxed_params`: nn.LogicallyPartitioned leaves, as
    `init` or `abstract_params(boxed=True)` give them): a router param is one
    with a ROUTER_AXES axis, a routed-expert kernel one with the 'expert'
    axis, and a never-trained router's kernel (FIXED_ROUTER_AXIS) is always
    frozen. Shared experts are dense FFNs and train."""

    def label(leaf):
        names = set(leaf.names if isinstance(leaf, nn.Partitioned) else ())
        frozen = (FIXED_ROUTER_AXIS in names or (freeze_router and names & set(ROUTER_AXES))
                  or (freeze_experts and EXPERT_AXIS in names))
        return "frozen" if frozen else "trained"

    return jax.tree.map(label, boxed_params, is_leaf=lambda v: isinstance(v, nn.Partitioned))


def freeze(opt: optax.GradientTransformation, labels) -> optax.GradientTransformation:
    """`opt` on the 'trained' params of `labels` (frozen_labels); the
    'frozen' ones get zero updates (and no optimizer state, clipping norm or
    weight decay)."""
    if "frozen" not in jax.tree.leaves(labels):
        return opt
    return optax.multi_transform({"trained": opt, "frozen": optax.set_to_zero()}, labels)


def optimizer(cfg, total_steps: int, labels=None) -> optax.GradientTransformation:
    """The optimizer of OptimizerConfig `cfg`; `labels` (frozen_labels) keeps
    the 'frozen' params where they are."""
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
    return opt if labels is None else freeze(opt, labels)
