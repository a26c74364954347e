"""Published model shapes (and the tiny CPU one) as T5Configs.

configs/models/*.py expose each as an ml_collections config; trainer configs
start from these and change what they need with dataclasses.replace.
"""
from __future__ import annotations

from moejax.models.config import MoeConfig, T5Config
from moejax.routing import RouterConfig


def tiny() -> T5Config:
    """CPU default and test model: d_model 64, 2+2 layers, 8 experts every
    other layer (expert choice encoder, top-2 decoder)."""
    return T5Config(
        vocab_size=1024, d_model=64, num_heads=4, head_dim=16, d_ff=128,
        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
        encoder_moe=MoeConfig(interval=2, router=RouterConfig(
            "expert_choice", num_experts=8, capacity_factor=2.0)),
        decoder_moe=MoeConfig(interval=2, router=RouterConfig("top_k", num_experts=8, k=2)))


def t5_1_1_small() -> T5Config:
    """T5.1.1 Small (~77M params): gated GELU, untied embeddings."""
    return T5Config(vocab_size=32128, d_model=512, num_heads=6, head_dim=64, d_ff=1024,
                    num_encoder_layers=8, num_decoder_layers=8, dropout_rate=0.1)


def t5_1_1_base() -> T5Config:
    """T5.1.1 Base (~248M params): gated GELU, untied embeddings."""
    return T5Config(vocab_size=32128, d_model=768, num_heads=12, head_dim=64, d_ff=2048,
                    num_encoder_layers=12, num_decoder_layers=12, dropout_rate=0.1)


def switch_base(num_experts: int = 8) -> T5Config:
    """Switch-Base-E (Fedus et al. 2021): T5-Base shape, ReLU FFNs, top-1
    experts every other layer, capacity factor 1.25 (2.0 in eval), balance
    loss 1e-2."""
    moe = MoeConfig(interval=2, router=RouterConfig(
        "switch", num_experts=num_experts, capacity_factor=1.25, eval_capacity_factor=2.0,
        jitter_eps=0.01, load_balance_weight=1e-2, z_loss_weight=0.0))
    return T5Config(vocab_size=32128, d_model=768, num_heads=12, head_dim=64, d_ff=3072,
                    num_encoder_layers=12, num_decoder_layers=12, activations=("relu",),
                    dropout_rate=0.1, tie_embeddings=True, encoder_moe=moe, decoder_moe=moe)


def st_moe_l() -> T5Config:
    """ST-MoE-L-style (Zoph et al. 2022): d_model 1024, 24+24 layers, 32
    experts in every 4th FFN, top-2, capacity factor 1.25 (2.0 in eval),
    router z-loss 1e-3 and balance loss 1e-2, gated GELU."""
    moe = MoeConfig(interval=4, router=RouterConfig(
        "top_k", num_experts=32, k=2, capacity_factor=1.25, eval_capacity_factor=2.0,
        load_balance_weight=1e-2, z_loss_weight=1e-3))
    return T5Config(vocab_size=32128, d_model=1024, num_heads=16, head_dim=64, d_ff=2816,
                    num_encoder_layers=24, num_decoder_layers=24, dropout_rate=0.1,
                    encoder_moe=moe, decoder_moe=moe)
