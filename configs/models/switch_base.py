"""Switch-Base-E (Fedus et al. 2021): T5-Base shape, ReLU FFNs, top-1 experts
every other layer, capacity factor 1.25 (2.0 in eval), balance loss 1e-2.

The number of experts is the config argument, as ml_collections passes it:
`--config=configs/models/switch_base.py:128` (default 8).
"""
import ml_collections

from moejax.models import MoeConfig, T5Config
from moejax.routing import RouterConfig
from moejax.structured import to_mapping


def get_config(num_experts: str = "8"):
    num_experts = int(num_experts)
    moe = MoeConfig(interval=2, router=RouterConfig(
        "switch", num_experts=num_experts, capacity_factor=1.25, eval_capacity_factor=2.0,
        jitter_eps=0.01, load_balance_weight=1e-2, z_loss_weight=0.0))
    return ml_collections.ConfigDict(to_mapping(T5Config(
        vocab_size=32128, d_model=768, num_heads=12, head_dim=64, d_ff=3072,
        num_encoder_layers=12, num_decoder_layers=12, activations=("relu",), dropout_rate=0.1,
        tie_embeddings=True, encoder_moe=moe, decoder_moe=moe)))
