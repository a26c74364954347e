"""Thin Flax linen wrappers over the pure kernels."""
from moejax.layers.ffn import MlpBlock
from moejax.layers.moe import MOE_COLLECTION, ROUTER_STATE, MoeLayer
from moejax.layers.scorers import FIXED_ROUTER_AXIS, ROUTER_AXES, SCORERS, register_scorer

__all__ = ["FIXED_ROUTER_AXIS", "MOE_COLLECTION", "MlpBlock", "MoeLayer", "ROUTER_AXES",
           "ROUTER_STATE", "SCORERS", "register_scorer"]
