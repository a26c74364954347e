"""Tiny T5-MoE: the CPU default and the test model."""
import ml_collections

from moejax.models import MoeConfig, T5Config
from moejax.routing import RouterConfig
from moejax.structured import to_mapping


def get_config():
    return ml_collections.ConfigDict(to_mapping(T5Config(
        vocab_size=1024, d_model=64, num_heads=4, head_dim=16, d_ff=128,
        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
        encoder_moe=MoeConfig(interval=2, router=RouterConfig(
            "expert_choice", num_experts=8, capacity_factor=2.0)),
        decoder_moe=MoeConfig(interval=2, router=RouterConfig("top_k", num_experts=8, k=2)))))
