"""The names the layers, the model and the trainer share: variable
collections and the logical axes params are annotated with (which
moejax.train.partitioning maps onto mesh axes, and by which the optimizer
freezes and upcycling copies params). One home, so no module spells them
on its own."""

# Collection the MoE layer sows its aux loss and routing metrics into.
MOE_COLLECTION = "moe"
# Collection of routing state that is not a parameter: the selection bias of
# auxiliary-loss-free or quantile balancing, the relu router's L1 coefficient
# (moejax.routing.state).
ROUTER_STATE = "router_state"
# Collection of routing decisions, sown only where the caller makes it
# mutable (moejax.train.traces): each MoE layer's combine weights per token.
TRACE_COLLECTION = "routing_trace"

# The logical axis of routed experts: expert kernels are [E, ...] along it,
# freeze_experts freezes the params that carry it, upcycling fills it.
EXPERT_AXIS = "expert"
# Logical axes that only router params carry: freezing selects params by
# their axes (moejax/train/optim.py: a router by these, experts by
# EXPERT_AXIS), so the optimizer never needs to know a scorer's param names.
# A router that never trains (router 'frozen') marks its kernel
# FIXED_ROUTER_AXIS instead of 'router_experts', so one mechanism freezes it
# and freeze_router alike.
FIXED_ROUTER_AXIS = "router_fixed"
ROUTER_AXES = ("router_experts", "router_proj", "router_scale", FIXED_ROUTER_AXIS)
