"""ST-MoE-L-style span corruption on C4 for a Cloud TPU pod (e.g. v4-256):
32 experts sharded over an 'expert' axis of 8 (all-to-all dispatch),
4-way tensor parallelism over 'model', the rest data parallel; batch 1024
of 512/114 tokens. Launch with scripts/launch_tpu_pod.sh.

Hardware: a TPU v4-256 pod slice (or any 256 devices; the mesh sizes are
config fields). Runtime and result: not measured here (no pod); the
command, sharding and multi-host set-up are tested on 8 fake CPU devices
and two localhost processes, not at this scale.
"""
import dataclasses
import os

from moejax.models import presets
from moejax.structured import config_dict, from_mapping, load_config_file
from moejax.train.config import CheckpointConfig, MeshConfig, TrainConfig


def get_config():
    # The data, tokenizer and optimizer of the Switch-Base C4 recipe (one
    # place says how C4 is read and what T5's vocabulary is).
    c4 = from_mapping(TrainConfig, load_config_file(
        os.path.join(os.path.dirname(__file__), "switch_base_c4.py")))
    return config_dict(dataclasses.replace(
        c4, model=presets.st_moe_l(),
        mesh=MeshConfig(data=-1, model=4, expert=8, expert_axis="expert"),
        checkpoint=CheckpointConfig(every_steps=2000, keep=3),
        steps=250000, batch_size=1024, eval_every_steps=2000, eval_batches=20,
        log_every_steps=100))
