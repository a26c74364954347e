"""Switch-Base-E (see moejax.models.presets.switch_base).

The number of experts is the config argument, as ml_collections passes it:
`--config=configs/models/switch_base.py:128` (default 8).
"""
from moejax.models import presets
from moejax.structured import config_dict


def get_config(num_experts: str = "8"):
    return config_dict(presets.switch_base(int(num_experts)))
