"""Name -> router table. Adding a router is one kernel plus one `register_router` call."""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from moejax.routing.base import RoutingResult, balance_segment, check_logits


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    """How a named router is built.

    kernel: pure (logits [G, T, E], *, mask [G, T], rng, cfg, train,
      bias=None, segment=None) -> RoutingResult, the one signature of every
      router (`route` documents the arguments).
    scorer: the name of what turns tokens into logits, one of
      `moejax.layers.SCORERS`: 'linear' (x @ W_r), 'cosine' (X-MoE
      low-dimensional cosine similarity / temperature) or 'hash' (fixed
      expert per token id).
    trainable: False keeps the scorer's weights out of the optimiser.
    default_k: experts per token when the config leaves k unset.
    fixed_k: the router only makes sense with k == default_k.
    causal: a token's routing depends only on itself and earlier tokens of
      its group, so it may run in an autoregressive decoder. Expert choice is
      not: which tokens an expert takes depends on later tokens.
    validate: checks the RouterConfig fields only this router reads (raises
      ValueError naming the field); called when a RouterConfig is built.
    score_options: the kernel reads RouterConfig.score_fn, routed_scaling,
      expert_groups / topk_groups and num_null_experts, and selects with a
      `bias` (bias_update_rate, quantile_balancing; see
      `moejax.routing.top_k`); config validation and `route` refuse those
      for other routers.
    balance_scopes: the kernel's load-balance loss is taken per `segment`
      tokens (RouterConfig.balance_scope; see
      `moejax.routing.base.load_balance_loss`); config validation refuses a
      scope other than 'group' for other routers.
    capacity_drops: the capacity limits which tokens get their experts, so
      lifting it (RouterConfig.dropless) gives every token its choices;
      False where capacity is the routing rule itself (expert choice: each
      expert takes C tokens).
    """

    kernel: Callable[..., RoutingResult]
    scorer: str = "linear"
    trainable: bool = True
    default_k: int = 1
    fixed_k: bool = False
    causal: bool = True
    validate: Callable[[Any], None] | None = None
    score_options: bool = False
    balance_scopes: bool = False
    capacity_drops: bool = True


ROUTERS: dict[str, RouterSpec] = {}
# What `route` passes every kernel besides the logits.
KERNEL_KEYWORDS = ("mask", "rng", "cfg", "train", "bias", "segment")


def register_router(name: str, kernel: Callable[..., RoutingResult], *, scorer: str = "linear",
                    trainable: bool = True, default_k: int = 1, fixed_k: bool = False,
                    causal: bool = True, validate: Callable[[Any], None] | None = None,
                    score_options: bool = False, balance_scopes: bool = False,
                    capacity_drops: bool = True) -> None:
    """Makes `name` usable as `RouterConfig(name=...)` and in config files."""
    if name in ROUTERS:
        raise ValueError(f"router name {name!r} is already registered")
    params = inspect.signature(kernel).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [k for k in KERNEL_KEYWORDS if k not in params]
        if missing:
            raise ValueError(f"router {name!r} kernel {getattr(kernel, '__name__', kernel)} "
                             f"lacks the keyword(s) {', '.join(missing)}; every kernel takes "
                             "(logits, *, mask, rng, cfg, train, bias=None, segment=None)")
    ROUTERS[name] = RouterSpec(kernel, scorer, trainable, default_k, fixed_k, causal, validate,
                               score_options, balance_scopes, capacity_drops)


def get_router(name: str) -> RouterSpec:
    try:
        return ROUTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown router name {name!r}; known routers: {', '.join(sorted(ROUTERS))}") from None


def route(cfg, logits, *, mask=None, rng=None, train: bool = False,
          bias=None, sequence_length: int | None = None) -> RoutingResult:
    """Routes `logits` float [G, T, E] with the router `cfg` (a RouterConfig)
    names. mask: bool [G, T] (None: every token is real); rng: a PRNG key
    for routers that sample in training; bias: float [E] added to the
    scores for selection only (routers with score_options; None: none);
    sequence_length: tokens per sequence of the [G * T] tokens, which
    cfg.balance_scope='sequence' needs (ignored otherwise).

    Every kernel is called the same way: kernel(logits, mask=, rng=, cfg=,
    train=, bias=, segment=), segment being the tokens per load-balance
    segment of cfg.balance_scope (`balance_segment`)."""
    if bias is not None and not cfg.spec.score_options:
        raise ValueError(f"router {cfg.name!r} takes no selection bias")
    check_logits(logits, mask, cfg.num_choices)
    g, t = logits.shape[:2]
    return cfg.spec.kernel(logits, mask=mask, rng=rng, cfg=cfg, train=train, bias=bias,
                           segment=balance_segment(cfg, g, t, sequence_length))
