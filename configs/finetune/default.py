"""The offline fine-tuning demo: the embedded default's pretrained tiny
MoE-T5 fine-tuned on `embedded_topics` (a generated sentence -> its topic,
8 classes, chance 12.5%), scored by greedy decoding every 100 steps.

    python -m moejax.train --config=configs/default.py --workdir=/tmp/moejax_default
    python -m moejax.finetune --config=configs/finetune/default.py \\
        --init_checkpoint=/tmp/moejax_default --workdir=/tmp/moejax_topics

Hardware: any CPU (measured on 2 cores). Runtime: the demo takes about 45 s
(300 steps, decoding included). Expected: validation accuracy (greedy
decoding, 400 examples) 9.5% at step 100, 48.0% at step 200 and 100.0% at
step 300 (macro-F1 100.0) (results/readme/figures.json, measured by
scripts/readme_figures.py).

The model must be the pretraining config's; the tokenizer comes from the
init checkpoint's workdir.
"""
import os

import moejax.tasks  # noqa: F401  (registers data.source='task', which this config names)
from moejax.structured import config_dict, from_mapping, load_config_file
from moejax.train.config import (
    CheckpointConfig,
    DataConfig,
    OptimizerConfig,
    TokenizerConfig,
    TrainConfig,
)


def get_config():
    pretrain = from_mapping(TrainConfig, load_config_file(
        os.path.join(os.path.dirname(__file__), os.pardir, "default.py")))
    return config_dict(TrainConfig(
        model=pretrain.model,
        data=DataConfig(source="task", task="embedded_topics", objective="text_to_text",
                        inputs_length=32, targets_length=8, eval_split="validation"),
        tokenizer=TokenizerConfig(extra_ids=pretrain.tokenizer.extra_ids),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant",
                                  warmup_steps=0),
        checkpoint=CheckpointConfig(every_steps=100, keep=1),
        steps=300, batch_size=32, eval_every_steps=100, eval_batches=2, eval_examples=0,
        log_every_steps=10))
