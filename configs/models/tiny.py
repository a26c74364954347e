"""Tiny T5-MoE: the CPU default and the test model (see moejax.models.presets.tiny)."""
from moejax.models import presets
from moejax.structured import config_dict


def get_config():
    return config_dict(presets.tiny())
