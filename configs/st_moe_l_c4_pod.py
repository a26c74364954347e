"""ST-MoE-L-style span corruption on C4 for a Cloud TPU pod (e.g. v4-256):
32 experts sharded over an 'expert' axis of 8 (all-to-all dispatch),
4-way tensor parallelism over 'model', the rest data parallel; batch 1024
of 512/114 tokens. Launch with scripts/launch_tpu_pod.sh.

Hardware: a TPU v4-256 pod slice (or any 256 devices; the mesh sizes are
config fields). Runtime and result: not measured here (no pod); the
command, sharding and multi-host set-up are tested on 8 fake CPU devices
and two localhost processes, not at this scale.
"""
from moejax.models import presets
from moejax.structured import config_dict
from moejax.train.config import (
    CheckpointConfig,
    DataConfig,
    MeshConfig,
    OptimizerConfig,
    TokenizerConfig,
    TrainConfig,
)


def get_config():
    return config_dict(TrainConfig(
        model=presets.st_moe_l(),
        data=DataConfig(source="tfds", tfds_name="c4/en:3.1.0", objective="span_corruption",
                        inputs_length=512, targets_length=114),
        tokenizer=TokenizerConfig(path="gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1.0, schedule="rsqrt",
                                  warmup_steps=10000),
        mesh=MeshConfig(data=-1, model=4, expert=8, expert_axis="expert"),
        checkpoint=CheckpointConfig(every_steps=2000, keep=3),
        steps=250000, batch_size=1024, eval_every_steps=2000, eval_batches=20,
        log_every_steps=100))
