"""Model config files: they load into T5Config and have the published sizes."""
import os

import pytest
from script_util import ROOT, load_script

param_counts = load_script("param_counts")


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


@pytest.mark.parametrize("spec", ["default.py", "switch_base_c4.py", "switch_base_c4.py:top2",
                                  "switch_base_c4.py:expert_choice", "st_moe_l_c4_pod.py",
                                  "finetune/default.py", "finetune/switch_base.py",
                                  "finetune/switch_base.py:super_glue_record"])
def test_train_configs_load(spec):
    from moejax.structured import from_mapping, load_config_file
    from moejax.train.config import TrainConfig

    cfg = from_mapping(TrainConfig, load_config_file(os.path.join(ROOT, "configs", spec)))
    assert cfg.model.vocab_size >= 512 and cfg.steps > 0
    if spec.startswith("finetune/"):
        assert cfg.data.source == "task" and cfg.data.objective == "text_to_text"
        assert cfg.data.task == (spec.partition(":")[2] or
                                 ("embedded_topics" if "default" in spec else "glue_mixture"))
    if spec.endswith("expert_choice"):
        assert cfg.model.encoder_moe.router.name == "expert_choice"
        assert cfg.model.decoder_moe.router.is_causal


def test_none_fields_are_typed_placeholders():
    from moejax.structured import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "default.py"))
    assert config.model.decoder_moe.router.noise_std is None
    config.model.decoder_moe.router.noise_std = 0.5  # what --config.x=2.0 does
    with pytest.raises(TypeError):
        config.model.decoder_moe.router.noise_std = "high"


def test_unknown_override_names_close_matches(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "moejax.train", "--config=configs/default.py",
                          f"--workdir={tmp_path}", "--config.optimizer.nme=adamw"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "did you mean 'name'?" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.listdir(tmp_path)
