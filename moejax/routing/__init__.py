"""Pure routing kernels: (logits [G, T, E], mask, rng, cfg, train) -> RoutingResult.

Route with `route(cfg, logits, mask=..., rng=..., train=...)`. Add a router
by writing one kernel with that signature and registering it:

    from moejax.routing import register_router
    register_router("my_router", my_kernel)  # scorer="linear" by default

after which `RouterConfig(name="my_router")` and `--config.model.router.name`
accept it.
"""
from moejax.routing import expert_choice, moesart, relu, state, top_k, top_p
from moejax.routing.base import RoutingResult, compute_capacity
from moejax.routing.config import RouterConfig
from moejax.routing.expert_choice import expert_choice_route
from moejax.routing.gshard import gshard_top2_route
from moejax.routing.moesart import moesart_route
from moejax.routing.registry import ROUTERS, RouterSpec, get_router, register_router, route
from moejax.routing.relu import relu_route
from moejax.routing.top_k import top_k_route, update_selection_bias, vmoe_route
from moejax.routing.top_p import top_p_route

# balance_scopes: the Switch load-balance loss, per group, sequence or batch.
scoped = dict(balance_scopes=True)
register_router("switch", top_k_route, default_k=1, fixed_k=True, score_options=True, **scoped)
register_router("top_k", top_k_route, default_k=2, score_options=True, **scoped)
register_router("gshard_top2", gshard_top2_route, default_k=2, fixed_k=True, **scoped)
# Batch-prioritised: a token's place depends on later tokens' probabilities.
register_router("vmoe", vmoe_route, default_k=2, causal=False, validate=top_k.validate_vmoe)
register_router("expert_choice", expert_choice_route, default_k=1, fixed_k=True, causal=False,
                validate=expert_choice.validate, capacity_drops=False)
register_router("xmoe", top_k_route, scorer="cosine", default_k=1, validate=top_k.validate_xmoe,
                score_options=True, **scoped)
register_router("moesart", moesart_route, default_k=2, validate=moesart.validate)
register_router("top_p", top_p_route, default_k=2, validate=top_p.validate, **scoped)
register_router("frozen", top_k_route, trainable=False, default_k=1, score_options=True,
                **scoped)
register_router("hash", top_k_route, scorer="hash", default_k=1, **scoped)
# k: the experts per token the L1 coefficient steers toward (on average).
register_router("relu", relu_route, default_k=2, validate=relu.validate)

__all__ = [
    "ROUTERS", "RouterConfig", "RouterSpec", "RoutingResult", "compute_capacity",
    "expert_choice_route", "get_router", "gshard_top2_route", "moesart_route",
    "register_router", "relu_route", "route", "state", "top_k_route", "top_p_route",
    "update_selection_bias", "vmoe_route",
]
