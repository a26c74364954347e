"""ST-MoE-L-style (see moejax.models.presets.st_moe_l)."""
from moejax.models import presets
from moejax.structured import config_dict


def get_config():
    return config_dict(presets.st_moe_l())
