"""The trainer's config: frozen dataclasses, read from ml_collections files.

`configs/*.py` return `config_dict(TrainConfig(...))`; the trainer turns the
(overridden) ConfigDict back into a TrainConfig with `from_mapping`, so an
unknown field is an error naming close matches and each field is validated
in one place.
"""
from __future__ import annotations

import dataclasses

from moejax.data.objectives import OBJECTIVES
from moejax.data.sources import validate_source
from moejax.models.config import T5Config


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """source: one of moejax.data.sources.source_names().
    tfds_name / tfds_data_dir / train_split / eval_split: for 'tfds'
      ('task' reads tfds_data_dir, and eval_split, 'validation' or 'test',
      picks the split that evaluation decodes: test writes leaderboard
      files without scores).
    task: for source 'task': a task or mixture of moejax.tasks
      ('glue_sst2', 'glue_mixture', 'embedded_topics', ...).
    mixing_cap: examples-proportional mixing takes at most this many
      examples of each task per epoch (0 = all).
    train_files / eval_files: comma-separated globs for 'text' / 'tfrecord'.
    text_key: the text feature of tfds / TFRecord examples.
    embedded_documents / embedded_eval_documents: size of the generated
      corpus ('embedded', 'knowledge' or 'markov').
    knowledge_entities: entities per domain of the 'knowledge' corpus's
      knowledge base (8 domains, 5 facts per entity), 2 to 900.
    markov_words: words per domain of the 'markov' corpus's second-order
      chains (8 domains, 2 successors per pair of words), 2 to 900.
    objective: one of moejax.data.objectives.OBJECTIVES; inputs_length /
      targets_length: encoder / decoder sequence lengths.
    pack: pack several examples per row (segment ids and positions).
    num_shards: input shards; 0 = one per process. Fix it to get the same
      global batches with any number of processes.
    seed: corpus generation, epoch order and noise.
    """

    source: str = "embedded"
    tfds_name: str = ""
    tfds_data_dir: str = ""
    train_split: str = "train"
    eval_split: str = "validation"
    train_files: str = ""
    eval_files: str = ""
    text_key: str = "text"
    task: str = ""
    mixing_cap: int = 0
    embedded_documents: int = 20000
    embedded_eval_documents: int = 500
    knowledge_entities: int = 64
    markov_words: int = 32
    objective: str = "span_corruption"
    inputs_length: int = 128
    targets_length: int = 32
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    pack: bool = True
    num_shards: int = 0
    seed: int = 0

    def __post_init__(self):
        validate_source(self)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if (self.source == "task") != (self.objective == "text_to_text"):
            raise ValueError(f"source 'task' goes with objective 'text_to_text' and only with it; "
                             f"got source={self.source!r}, objective={self.objective!r}")
        if self.mixing_cap < 0:
            raise ValueError(f"mixing_cap must be >= 0 (0 = no cap), got {self.mixing_cap}")
        if min(self.inputs_length, self.targets_length) < 2:
            raise ValueError(f"inputs_length and targets_length must be >= 2, got "
                             f"{self.inputs_length}, {self.targets_length}")
        if not 0 < self.noise_density < 1:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """path: an existing SentencePiece model ('' = train one on the training
    corpus, cached as <workdir>/tokenizer/spm.model).
    vocab_size: pieces of a trained model (an upper bound).
    train_documents: documents the tokenizer is trained on.
    extra_ids: sentinel ids above the pieces (T5: 100)."""

    path: str = ""
    vocab_size: int = 2000
    train_documents: int = 5000
    extra_ids: int = 100

    def __post_init__(self):
        for name in ("vocab_size", "train_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {self.extra_ids}")


OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("rsqrt", "constant", "cosine", "wsd")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """name: 'adafactor' (T5 defaults: factored second moments, no first
    moment, update clipping 1.0, param-scale updates) or 'adamw'.
    schedule: 'rsqrt' = learning_rate / sqrt(max(step, warmup_steps)) (T5),
      'constant' after linear warmup, 'cosine' decay to 0 at train.steps,
      or 'wsd' (warmup-stable-decay): constant, then a linear decay to 0 over
      the last `cooldown_steps` steps.
    clip_norm: global gradient-norm clipping (0 = off).
    """

    name: str = "adafactor"
    learning_rate: float = 1.0
    schedule: str = "rsqrt"
    warmup_steps: int = 10000
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 0.0
    cooldown_steps: int = 0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.clip_norm < 0:
            raise ValueError("learning_rate must be > 0, warmup_steps and clip_norm >= 0")
        if (self.schedule == "wsd") != (self.cooldown_steps > 0):
            raise ValueError(f"schedule 'wsd' needs cooldown_steps > 0 and only it uses them; got "
                             f"schedule={self.schedule!r}, cooldown_steps={self.cooldown_steps}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ('data', 'model', 'expert') axes; one may be -1 (fill).
    expert_axis: 'expert' or 'data' (see moejax.train.partitioning)."""

    data: int = -1
    model: int = 1
    expert: int = 1
    expert_axis: str = "expert"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """every_steps: save interval (0 = only at the end and on SIGTERM).
    keep: latest checkpoints kept; the best by eval loss is kept as well.
    async_save: write in the background while training continues."""

    every_steps: int = 500
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        # keep=0 would delete every checkpoint, the final one included.
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 (the latest checkpoints kept), got {self.keep}")
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0 = only at the end and on SIGTERM), "
                             f"got {self.every_steps}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """batch_size: global sequences per step (split over grad_accum_steps
    micro-batches). z_loss: weight of T5X's log(Z)^2 loss on the logits;
    router aux-loss weights live in each RouterConfig.
    eval_every_steps / eval_batches: held-out evaluation (0 = off).
    eval_examples: with a task source, every evaluation also decodes this
      many examples of each evaluation set (0 = all) and scores them with
      the task's official metrics.
    log_every_steps: metrics to metrics.jsonl, TensorBoard and the bar.
    init_checkpoint: fine-tuning starts from these params (see
      moejax.train.init: a moejax workdir or step dir, or 'hf:<model>');
      '' = random init. Ignored once the workdir has its own checkpoint.
    upcycle / upcycle_noise: init_checkpoint is a dense model to start
      this MoE model from (sparse upcycling, Komatsuzaki et al. 2022):
      every expert is a copy of the dense FFN it replaces, scaled by
      (1 + upcycle_noise * N(0, 1)) per expert and element (0 = exact
      copies); routers start from a fresh init; the optimizer starts fresh.
    freeze_router / freeze_experts: keep the MoE router weights / routed
      expert FFN weights at their initial values (the optimizer skips them;
      chosen by logical axis, see optim.frozen_labels; shared experts train).
      Router 'frozen' is always kept fixed.
    trace_routing_every_steps: every this many steps (and at the first and
      last step) save each MoE layer's routing of one fixed held-out batch
      to <workdir>/routing_traces (moejax.train.traces; 0 = off); draw
      them with `python scripts/routing_report.py <workdir>`."""

    model: T5Config = T5Config()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    steps: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    z_loss: float = 1e-4
    seed: int = 0
    eval_every_steps: int = 200
    eval_batches: int = 4
    eval_examples: int = 0
    log_every_steps: int = 10
    init_checkpoint: str = ""
    upcycle: bool = False
    upcycle_noise: float = 0.0
    freeze_router: bool = False
    freeze_experts: bool = False
    trace_routing_every_steps: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("steps, batch_size and grad_accum_steps must be >= 1")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by "
                             f"grad_accum_steps={self.grad_accum_steps}")
        if self.eval_examples < 0:
            raise ValueError(f"eval_examples must be >= 0 (0 = all), got {self.eval_examples}")
        if self.log_every_steps < 1:
            raise ValueError(f"log_every_steps must be >= 1, got {self.log_every_steps}")
        if self.eval_every_steps < 0:
            raise ValueError(f"eval_every_steps must be >= 0 (0 = no evaluation), got "
                             f"{self.eval_every_steps}")
        if self.eval_every_steps and self.eval_batches < 1:
            raise ValueError(f"eval_batches must be >= 1 when evaluating (eval_every_steps="
                             f"{self.eval_every_steps}), got {self.eval_batches}")
        if self.trace_routing_every_steps < 0:
            raise ValueError(f"trace_routing_every_steps must be >= 0 (0 = no traces), got "
                             f"{self.trace_routing_every_steps}")
        if self.upcycle and not self.init_checkpoint:
            raise ValueError("upcycle=True needs init_checkpoint: the dense model to upcycle")
        if self.upcycle_noise < 0:
            raise ValueError(f"upcycle_noise must be >= 0 (0 = exact copies), got "
                             f"{self.upcycle_noise}")
