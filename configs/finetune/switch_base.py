"""Fine-tune Switch-Base-8 on a GLUE / SuperGLUE task or mixture, T5 recipe:
Adafactor at a constant 1e-3, batch 128, inputs 512 / targets 62, dropout
0.1 and expert dropout 0.4 (Switch Transformers' fine-tuning), greedy
decoding with the official metrics every 1000 steps.

    python -m moejax.finetune --config=configs/finetune/switch_base.py:glue_sst2 \\
        --init_checkpoint=hf:google/switch-base-8 --workdir=DIR

The argument is a task or mixture name ('glue_mixture', 'super_glue_mixture',
'glue_cola', ..., see moejax.tasks.known_names()); an unknown name lists them.
Hardware: an accelerator host (e.g. a TPU v3-8 or 8 GPUs of 40 GB; the
mesh is data-parallel, with the experts sharded over the data axis).
Runtime and result: not measured here (no accelerator); compare with
Switch-Base's fine-tuning results in Table 5 of Fedus et al. (2021). On CPU
it runs, but far too slowly to finish.
Needs the tfds datasets prepared (`tfds build glue/sst2`, or
data.tfds_data_dir pointing at prepared data) and, for an hf: init, the
model's spiece.model, which is fetched with it.
"""
import dataclasses

from moejax.models import presets
from moejax.structured import config_dict
from moejax.tasks import tasks_of
from moejax.train.config import (
    CheckpointConfig,
    DataConfig,
    MeshConfig,
    OptimizerConfig,
    TrainConfig,
)


def get_config(task: str = "glue_mixture"):
    tasks_of(task)  # an unknown name fails here, listing the known ones
    model = presets.switch_base(8)
    model = dataclasses.replace(
        model, dropout_rate=0.1,
        encoder_moe=dataclasses.replace(model.encoder_moe, expert_dropout=0.4),
        decoder_moe=dataclasses.replace(model.decoder_moe, expert_dropout=0.4))
    return config_dict(TrainConfig(
        model=model,
        data=DataConfig(source="task", task=task, objective="text_to_text", inputs_length=512,
                        targets_length=62, pack=True, mixing_cap=524288),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant",
                                  warmup_steps=0),
        mesh=MeshConfig(data=-1, model=1, expert=1, expert_axis="data"),
        checkpoint=CheckpointConfig(every_steps=1000, keep=2),
        init_checkpoint="hf:google/switch-base-8",
        steps=20000, batch_size=128, eval_every_steps=1000, eval_batches=10,
        log_every_steps=100))
