"""Model config files: they load into T5Config and have the published sizes."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "param_counts", os.path.join(ROOT, "scripts", "param_counts.py"))
param_counts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(param_counts)


@pytest.mark.parametrize("spec,published", [
    ("t5_1_1_small.py", 77e6), ("t5_1_1_base.py", 248e6), ("switch_base.py:8", 619e6),
    ("switch_base.py:128", 7.4e9), ("st_moe_l.py", 4.1e9)])
def test_published_parameter_counts(spec, published):
    cfg = param_counts.load_model_config(os.path.join(ROOT, "configs", "models", spec))
    total = param_counts.count(cfg)["total"]
    assert abs(total - published) / published < 0.03, total


def test_tiny_config_routes_expert_choice_encoder_token_choice_decoder():
    cfg = param_counts.load_model_config(os.path.join(ROOT, "configs", "models", "tiny.py"))
    assert cfg.encoder_moe.router.name == "expert_choice"
    assert cfg.decoder_moe.router.is_causal
    counts = param_counts.count(cfg)
    assert 0 < counts["experts"] < counts["total"]
