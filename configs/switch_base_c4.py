"""Switch-Base-8 span-corruption pretraining on C4 (tfds 'c4/en'), T5 recipe:
inputs 512 / targets 114, Adafactor with the inverse-square-root schedule
(10k warmup), batch 256, T5's SentencePiece vocabulary.

The router is the config argument (default 'switch'):
    --config=configs/switch_base_c4.py              top-1 (Switch)
    --config=configs/switch_base_c4.py:top2         GShard-style top-2
    --config=configs/switch_base_c4.py:expert_choice  expert choice in the
        encoder (the decoder keeps top-1: expert choice would see future tokens)
Hardware: a Cloud TPU slice or a multi-GPU host. Runtime and result: not
measured here (no accelerator); compare with the negative log perplexities
at fixed step counts in Fedus et al. (2021), Table 1.
Needs the C4 TFRecords prepared by tfds (`tfds build c4/en`, or
data.tfds_data_dir=gs://...) and T5's vocabulary at tokenizer.path.
"""
import dataclasses

from moejax.models import presets
from moejax.routing import RouterConfig
from moejax.structured import config_dict
from moejax.train.config import (
    CheckpointConfig,
    DataConfig,
    MeshConfig,
    OptimizerConfig,
    TokenizerConfig,
    TrainConfig,
)

ROUTERS = ("switch", "top2", "expert_choice")


def get_config(router: str = "switch"):
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
    model = presets.switch_base(8)
    if router == "top2":
        moe = dataclasses.replace(model.encoder_moe, router=dataclasses.replace(
            model.encoder_moe.router, name="top_k", k=2, jitter_eps=0.0))
        model = dataclasses.replace(model, encoder_moe=moe, decoder_moe=moe)
    elif router == "expert_choice":
        ec = RouterConfig("expert_choice", num_experts=8, capacity_factor=1.0,
                          eval_capacity_factor=2.0)
        model = dataclasses.replace(model, encoder_moe=dataclasses.replace(model.encoder_moe,
                                                                           router=ec))
    return config_dict(TrainConfig(
        model=model,
        data=DataConfig(source="tfds", tfds_name="c4/en:3.1.0", train_split="train",
                        eval_split="validation", objective="span_corruption",
                        inputs_length=512, targets_length=114),
        tokenizer=TokenizerConfig(path="gs://t5-data/vocabs/cc_all.32000/sentencepiece.model",
                                  extra_ids=100),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1.0, schedule="rsqrt",
                                  warmup_steps=10000),
        mesh=MeshConfig(data=-1, model=1, expert=1, expert_axis="data"),
        checkpoint=CheckpointConfig(every_steps=5000, keep=3),
        steps=524288, batch_size=256, eval_every_steps=5000, eval_batches=20,
        log_every_steps=100))
