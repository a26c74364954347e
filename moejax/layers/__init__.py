"""Thin Flax linen wrappers over the pure kernels."""
from moejax.layers.ffn import MlpBlock
from moejax.layers.moe import MOE_COLLECTION, ROUTER_STATE, MoeLayer
from moejax.layers.scorers import FROZEN_COLLECTION, ROUTER_PARAMS, SCORERS, register_scorer

__all__ = ["FROZEN_COLLECTION", "MOE_COLLECTION", "MlpBlock", "MoeLayer", "ROUTER_PARAMS",
           "ROUTER_STATE",
           "SCORERS", "register_scorer"]
