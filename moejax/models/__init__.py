"""T5.1.1 / Switch encoder-decoder, its config, and decoding."""
from moejax.models.config import MoeConfig, T5Config
from moejax.models.t5 import ROUTER_STATE, Transformer, abstract_params, as_variables, moe_outputs

__all__ = ["MoeConfig", "ROUTER_STATE", "T5Config", "Transformer", "abstract_params",
           "as_variables", "moe_outputs"]
