"""T5.1.1 Small (~77M params): gated GELU, untied embeddings
(see moejax.models.presets.t5_1_1_small)."""
from moejax.models import presets
from moejax.structured import config_dict


def get_config():
    return config_dict(presets.t5_1_1_small())
