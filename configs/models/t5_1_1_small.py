"""T5.1.1 Small (~77M params): gated GELU, untied embeddings."""
import ml_collections

from moejax.models import T5Config
from moejax.structured import to_mapping


def get_config():
    return ml_collections.ConfigDict(to_mapping(T5Config(
        vocab_size=32128, d_model=512, num_heads=6, head_dim=64, d_ff=1024,
        num_encoder_layers=8, num_decoder_layers=8, dropout_rate=0.1)))
