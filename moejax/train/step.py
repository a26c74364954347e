"""The jitted train and eval steps: pure functions of (state, batch).

state = {'step', 'params', 'opt_state'}, plus 'router_state' when a router
keeps state (moejax.routing.state: a selection bias, an L1 coefficient): updated by the
forward pass, never by the optimizer, saved with the rest. Randomness
(dropout, router noise) is folded from (seed, step), so a resumed run draws
the same numbers.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from moejax.data.pipeline import FEATURES
from moejax.layers import MOE_COLLECTION
from moejax.models import ROUTER_STATE, Transformer, moe_outputs


def target_tokens(batch):
    """float32 number of target tokens (>= 1), the loss denominator."""
    return jnp.maximum(jnp.sum(batch["decoder_target_tokens"] > 0), 1).astype(jnp.float32)


def token_losses(logits, targets):
    """(cross-entropy, log(Z)^2), both float32 [B, L], from float32 logits."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit, jnp.square(log_z)


def model_variables(state) -> dict:
    """What the model is applied with: {'params'} and, when the state has
    it, {'router_state'}."""
    return {"params": state["params"],
            **({ROUTER_STATE: state[ROUTER_STATE]} if ROUTER_STATE in state else {})}


def _sums(model: Transformer, params, others, batch, rng, train: bool, z_loss_weight: float,
          denominator):
    """Loss of one (micro-)batch scaled by `denominator` target tokens, and
    metric sums; `others` are the non-param variables (router_state).
    Returns (loss, (metrics, others after the step: the updated
    router_state in training))."""
    dropout_rng, router_rng = jax.random.split(rng)
    mutable = [MOE_COLLECTION, *([ROUTER_STATE] if train and ROUTER_STATE in others else [])]
    logits, state = model.apply(
        {"params": params, **others}, **{k: batch[k] for k in FEATURES}, enable_dropout=train,
        rngs={"dropout": dropout_rng, "router": router_rng}, mutable=mutable)
    others = {**others, **({ROUTER_STATE: state[ROUTER_STATE]} if ROUTER_STATE in state else {})}
    aux, moe_metrics = moe_outputs(state.get(MOE_COLLECTION), model.config)
    targets = batch["decoder_target_tokens"]
    weights = (targets > 0).astype(jnp.float32)
    ce, z = token_losses(logits, targets)
    ce_sum, z_sum = jnp.sum(ce * weights), jnp.sum(z * weights)
    loss = (ce_sum + z_loss_weight * z_sum) / denominator + aux
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
    metrics = {"cross_entropy": ce_sum / denominator, "z_loss": z_sum / denominator,
               "accuracy": correct / denominator, "aux_loss": aux, **moe_metrics}
    return loss, (metrics, others)


# Metrics that are sums over tokens (already divided by the batch's tokens);
# the rest are per-micro-batch means and are averaged over micro-batches.
TOKEN_SUMS = ("cross_entropy", "z_loss", "accuracy")


def make_train_step(model: Transformer, optimizer: optax.GradientTransformation,
                    lr_schedule: Callable, seed: int, z_loss_weight: float,
                    grad_accum_steps: int):
    """train_step(state, batch) -> (state, metrics). With grad_accum_steps
    = n the batch is split into n micro-batches (consecutive rows) whose
    gradients are summed before one update; token losses are normalised by
    the whole batch's target tokens, as one big batch would be. A selection
    bias (router_state) moves after every micro-batch, each seeing the last
    one's bias."""
    loss_fn = functools.partial(_sums, model)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        step = state["step"]
        rng = jax.random.fold_in(jax.random.key(seed), step)
        tokens = target_tokens(batch)
        others = {k: v for k, v in model_variables(state).items() if k != "params"}

        def micro(i, micro_batch, others):
            (_, (metrics, others)), grads = grad_fn(
                state["params"], others, micro_batch, jax.random.fold_in(rng, i), True,
                z_loss_weight, tokens)
            metrics = {k: v if k in TOKEN_SUMS else v / grad_accum_steps
                       for k, v in metrics.items()}
            return grads, metrics, others

        if grad_accum_steps == 1:
            grads, metrics, others = micro(0, batch, others)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)
            first = jax.tree.map(lambda x: x[0], micro_batches)
            zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                 jax.eval_shape(micro, 0, first, others)[:2])

            def accumulate(carry, xs):
                grads, metrics, others = carry
                more_grads, more_metrics, others = micro(*xs, others)
                return (jax.tree.map(jnp.add, grads, more_grads),
                        jax.tree.map(jnp.add, metrics, more_metrics), others), None

            (grads, metrics, others), _ = jax.lax.scan(
                accumulate, (*zeros, others), (jnp.arange(grad_accum_steps), micro_batches))
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["loss"] = (metrics["cross_entropy"] + z_loss_weight * metrics["z_loss"]
                           + metrics["aux_loss"])
        metrics["learning_rate"] = lr_schedule(step)
        metrics["grad_norm"] = optax.tree.norm(grads)
        # The trainer saves only states whose loss and params are all finite.
        metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        return {"step": step + 1, "params": params, "opt_state": opt_state, **others}, metrics

    return train_step


def make_eval_step(model: Transformer, z_loss_weight: float):
    """eval_step(variables, batch) -> metrics (no dropout, eval capacity
    factors, any selection bias frozen); variables: `model_variables(state)`.
    'dropless_loss' is the loss of the same params with no evaluation
    capacity limit (T5Config.dropless), the one metric on which runs with
    different eval capacity factors compare; it is 'loss' itself where no
    MoE layer has a limit to lift."""
    dropless = model.clone(config=model.config.dropless())

    def eval_step(variables, batch):
        others = {k: v for k, v in variables.items() if k != "params"}
        sums = lambda m: _sums(m, variables["params"], others, batch, jax.random.key(0), False,
                               z_loss_weight, target_tokens(batch))
        loss, (metrics, _) = sums(model)
        dropless_loss = loss if dropless.config == model.config else sums(dropless)[0]
        return {"loss": loss, "dropless_loss": dropless_loss, **metrics}

    return eval_step
