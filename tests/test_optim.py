"""Learning-rate schedules against hand-computed values."""
import math

import pytest

from moejax.train.config import OptimizerConfig
from moejax.train.optim import schedule


def lr(cfg, total, step):
    return float(schedule(cfg, total)(step))


def test_wsd_is_warmup_then_constant_then_linear_cooldown():
    cfg = OptimizerConfig(learning_rate=0.2, schedule="wsd", warmup_steps=10, cooldown_steps=40)
    assert lr(cfg, 100, 5) == pytest.approx(0.1)
    assert lr(cfg, 100, 10) == lr(cfg, 100, 60) == pytest.approx(0.2)
    assert lr(cfg, 100, 80) == pytest.approx(0.1)  # halfway through the cooldown
    assert lr(cfg, 100, 100) == pytest.approx(0.0, abs=1e-9)


def test_other_schedules_and_bad_cooldown():
    rsqrt = OptimizerConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=100)
    assert lr(rsqrt, 1000, 50) == pytest.approx(0.1) and lr(rsqrt, 1000, 400) == pytest.approx(0.05)
    cosine = OptimizerConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10)
    assert lr(cosine, 110, 60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="schedule 'wsd' needs cooldown_steps > 0"):
        OptimizerConfig(schedule="wsd")
    with pytest.raises(ValueError, match="only it uses them"):
        OptimizerConfig(schedule="constant", cooldown_steps=5)
