"""T5.1.1 Base (~248M params): gated GELU, untied embeddings."""
import ml_collections

from moejax.models import T5Config
from moejax.structured import to_mapping


def get_config():
    return ml_collections.ConfigDict(to_mapping(T5Config(
        vocab_size=32128, d_model=768, num_heads=12, head_dim=64, d_ff=2048,
        num_encoder_layers=12, num_decoder_layers=12, dropout_rate=0.1)))
