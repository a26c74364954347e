"""Router state: what a router keeps between steps, outside the optimizer.

Some routing rules carry state that training updates by a rule rather than
by gradient: the selection bias of auxiliary-loss-free balancing
(bias_update_rate) or quantile balancing (quantile_balancing), and the L1
coefficient of ReLU routing (router 'relu'). This module is their one
owner: which arrays a RouterConfig needs (`state_shapes`), what the router
is called with (`selection_bias`), what the state adds to the aux loss
(`state_loss`), and how a training step moves it (`update_state`). The
MoeLayer keeps the arrays in its 'router_state' collection (checkpointed
with the rest of the train state, frozen in evaluation) and calls these.
"""
from __future__ import annotations

import jax.numpy as jnp

from moejax.routing.base import score
from moejax.routing.relu import update_l1_coefficient
from moejax.routing.top_k import quantile_balanced_bias, update_selection_bias

SELECTION_BIAS = "selection_bias"
L1_COEFFICIENT = "l1_coefficient"


def state_shapes(cfg) -> dict[str, tuple[tuple[int, ...], float]]:
    """name -> (shape, initial value) of the state `cfg` needs ({} for none)."""
    shapes = {}
    if cfg.has_selection_bias:
        shapes[SELECTION_BIAS] = ((cfg.num_experts,), 0.0)
    if cfg.name == "relu":
        shapes[L1_COEFFICIENT] = ((), cfg.relu_l1_init)
    return shapes


def selection_bias(state: dict):
    """The bias [E] to route with, or None."""
    return state.get(SELECTION_BIAS)


def state_loss(state: dict, result):
    """float32 []: what the state adds to the router's aux loss (ReLU
    routing: coefficient * the L1 penalty; the coefficient is not trained)."""
    if L1_COEFFICIENT not in state:
        return jnp.zeros((), jnp.float32)
    return state[L1_COEFFICIENT] * result.metrics["relu_l1_loss"]


def state_metrics(state: dict) -> dict:
    """Scalar state worth plotting, for the layer's metrics: the L1
    coefficient (the selection bias shows in expert_load)."""
    return {L1_COEFFICIENT: state[L1_COEFFICIENT]} if L1_COEFFICIENT in state else {}


def update_state(state: dict, cfg, logits, mask, result) -> dict:
    """The state after one training step that routed `logits` float32
    [G, T, E] (mask bool [G, T] or None) into `result`. Statistics span
    every token of the call (the global batch under jit), real ones only."""
    new = dict(state)
    if cfg.bias_update_rate > 0:
        new[SELECTION_BIAS] = update_selection_bias(
            state[SELECTION_BIAS], result.metrics["expert_load"], cfg.bias_update_rate)
    if cfg.quantile_balancing:
        mask = jnp.ones(logits.shape[:2], bool) if mask is None else mask
        scores, _ = score(logits.astype(jnp.float32), cfg.score_fn)
        new[SELECTION_BIAS] = quantile_balanced_bias(
            scores, mask, state[SELECTION_BIAS], cfg.k, cfg.quantile_balancing_ema)
    if L1_COEFFICIENT in state:
        new[L1_COEFFICIENT] = update_l1_coefficient(
            state[L1_COEFFICIENT], result.metrics["active_fraction"], cfg)
    return new
