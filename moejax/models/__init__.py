"""T5.1.1 / Switch encoder-decoder, its config, and decoding."""
from moejax.models.config import MoeConfig, T5Config
from moejax.models.t5 import Transformer, abstract_params, moe_outputs

__all__ = ["MoeConfig", "T5Config", "Transformer", "abstract_params", "moe_outputs"]
