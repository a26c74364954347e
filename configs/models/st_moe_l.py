"""ST-MoE-L-style (Zoph et al. 2022): d_model 1024, 24+24 layers, 32 experts
in every 4th FFN, top-2 routing, capacity factor 1.25 (2.0 in eval), router
z-loss 1e-3 and balance loss 1e-2, gated GELU."""
import ml_collections

from moejax.models import MoeConfig, T5Config
from moejax.routing import RouterConfig
from moejax.structured import to_mapping


def get_config():
    moe = MoeConfig(interval=4, router=RouterConfig(
        "top_k", num_experts=32, k=2, capacity_factor=1.25, eval_capacity_factor=2.0,
        load_balance_weight=1e-2, z_loss_weight=1e-3))
    return ml_collections.ConfigDict(to_mapping(T5Config(
        vocab_size=32128, d_model=1024, num_heads=16, head_dim=64, d_ff=2816,
        num_encoder_layers=24, num_decoder_layers=24, dropout_rate=0.1,
        encoder_moe=moe, decoder_moe=moe)))
