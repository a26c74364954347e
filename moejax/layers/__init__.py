"""Thin Flax linen wrappers over the pure kernels."""
from moejax.layers.ffn import MlpBlock
from moejax.layers.moe import MoeLayer
from moejax.layers.names import (
                                 EXPERT_AXIS,
                                 FIXED_ROUTER_AXIS,
                                 MOE_COLLECTION,
                                 ROUTER_AXES,
                                 ROUTER_STATE,
                                 TRACE_COLLECTION,
)
from moejax.layers.scorers import SCORERS, register_scorer

__all__ = ["EXPERT_AXIS", "FIXED_ROUTER_AXIS", "MOE_COLLECTION", "MlpBlock", "MoeLayer",
           "ROUTER_AXES", "ROUTER_STATE", "SCORERS", "TRACE_COLLECTION", "register_scorer"]
