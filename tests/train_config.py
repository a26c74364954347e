"""A seconds-long pretraining config for the trainer tests (also run as a
--config file by the subprocess tests)."""
import dataclasses

from moejax.models import presets
from moejax.structured import config_dict
from moejax.train.config import (
    CheckpointConfig,
    DataConfig,
    OptimizerConfig,
    TokenizerConfig,
    TrainConfig,
)


def small(**overrides) -> TrainConfig:
    cfg = TrainConfig(
        model=dataclasses.replace(presets.tiny(), vocab_size=512),
        data=DataConfig(embedded_documents=2000, embedded_eval_documents=50, inputs_length=64,
                        targets_length=16),
        tokenizer=TokenizerConfig(vocab_size=300, train_documents=500),
        optimizer=OptimizerConfig(warmup_steps=20),
        checkpoint=CheckpointConfig(every_steps=10, keep=2),
        steps=30, batch_size=16, eval_every_steps=10, eval_batches=1, log_every_steps=1)
    return dataclasses.replace(cfg, **overrides)


def get_config():
    return config_dict(small())
