"""Thin Flax linen wrappers over the pure kernels."""
from moejax.layers.ffn import MlpBlock
from moejax.layers.moe import FROZEN_COLLECTION, MOE_COLLECTION, ROUTER_PARAMS, MoeLayer

__all__ = ["FROZEN_COLLECTION", "MOE_COLLECTION", "MlpBlock", "MoeLayer", "ROUTER_PARAMS"]
