"""The tiny T5-MoE runs experiments train: the embedded default shortened,
and the routing testbed (`python -m experiments.testbed` measures its
precondition)."""
from __future__ import annotations

import dataclasses

from moejax.routing import RouterConfig


def t5_config(size: str, seed: int, steps: int | None = None, evals: int = 5, **overrides):
    """The embedded default's model and data, shortened for experiments:
    inputs 64 / targets 16, batch 16, constant-after-warmup Adafactor;
    `steps` (default 150 quick, 1000 full) with `evals` evaluations."""
    from moejax.models import presets
    from moejax.train.config import (
        CheckpointConfig,
        DataConfig,
        OptimizerConfig,
        TokenizerConfig,
        TrainConfig,
    )

    steps = steps or {"quick": 150, "full": 1000}[size]
    cfg = TrainConfig(
        model=dataclasses.replace(presets.tiny(), vocab_size=512),
        data=DataConfig(embedded_documents=3000 if size == "quick" else 20000,
                        embedded_eval_documents=100, inputs_length=64, targets_length=16),
        tokenizer=TokenizerConfig(vocab_size=400, train_documents=2000),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="constant",
                                  warmup_steps=20),
        checkpoint=CheckpointConfig(every_steps=0, keep=1, async_save=False),
        steps=steps, batch_size=16, eval_every_steps=steps // evals, eval_batches=2,
        log_every_steps=max(1, steps // 30), seed=seed)
    return dataclasses.replace(cfg, **overrides)


# The routing testbed (python -m experiments.testbed measures its precondition).
# `--quick` learns a table of 8 x 16 x 16 contexts in 800 steps: every
# experiment's quick run then fits 15 minutes on 2 cores with room for its
# arms, and the MoE is ahead of dense by the end (5.0 paired SE over the 3
# quick seeds, 2026-12-03). The 8 x 32 x 32 table of `--full` is only
# starting to be learned at step 1600 (the MoE's lead at 1600 steps was
# 2.8 SE over 3 seeds, 24.7 at 5000).
TESTBED_WORDS = {"quick": 16, "full": 32, "smoke": 16}
TESTBED_STEPS = {"quick": 800, "full": 5000, "smoke": 20}
TESTBED_EXPERTS = 16
TESTBED_K = 2


def testbed_config(size: str, seed: int, steps: int | None = None, evals: int = 5, **overrides):
    """The dense tiny T5 (d_ff 128) on the capacity-bound `markov` corpus
    (8 domains of TESTBED_WORDS[size] words, a random second-order chain each):
    inputs 64 / targets 16, batch 32, Adafactor at a constant 1e-2 after 20
    warm-up steps and a linear cooldown to 0 over the last quarter ('wsd':
    the cooldown quiets the end, so final losses compare), `steps` (default
    TESTBED_STEPS[size]) with `evals` evaluations of 8 held-out batches.
    Seed `seed` draws its own chains, data order and init, the same in every
    arm (paired seeds)."""
    from moejax.train.config import DataConfig, OptimizerConfig

    steps = steps or TESTBED_STEPS[size]
    cfg = t5_config(size, seed, steps=steps, evals=evals, batch_size=32,
                    eval_batches=8 if size != "smoke" else 2)
    if size == "smoke":  # plumbing only: one layer per stack halves the compile time
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, num_encoder_layers=1, num_decoder_layers=1))
    cfg = dataclasses.replace(
        cfg, data=DataConfig(source="markov", markov_words=TESTBED_WORDS[size],
                             embedded_documents=40000 if size != "smoke" else 1000,
                             embedded_eval_documents=400,
                             inputs_length=64, targets_length=16, seed=seed),
        optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="wsd",
                                  warmup_steps=20, cooldown_steps=steps // 4))
    cfg = with_moe(cfg, dict(interval=0), dict(interval=0))
    return dataclasses.replace(cfg, **overrides)


def testbed_router(name: str = "top_k", **overrides) -> RouterConfig:
    """The testbed's router: TESTBED_EXPERTS experts, k = TESTBED_K with
    weights renormalised over the chosen experts (Mixtral / DeepSeek style),
    no capacity limit and no aux losses, so that neither drops nor a balance
    term confound the question whether experts pay off; `overrides` change
    any RouterConfig field."""
    fields = dict(num_experts=TESTBED_EXPERTS, k=TESTBED_K, normalize_weights=True,
                  capacity_factor=None, eval_capacity_factor=None, load_balance_weight=0.0,
                  z_loss_weight=0.0)
    return RouterConfig(name, **{**fields, **overrides})


def testbed_moe(cfg, router: RouterConfig | None = None, d_ff: int | None = None,
                interval: int = 1):
    """`cfg` (a testbed_config) with MoE FFNs in both stacks at every
    `interval`-th layer: `router` (default `testbed_router()`), experts of
    `d_ff` (default dense d_ff / k: equal active FLOPs)."""
    router = router or testbed_router()
    d_ff = d_ff or cfg.model.d_ff // router.k
    moe = dict(interval=interval, router=router, d_ff=d_ff)
    return with_moe(cfg, moe, moe)


def with_moe(cfg, encoder: dict | None = None, decoder: dict | None = None):
    """`cfg` with MoeConfig fields of the encoder / decoder stack replaced,
    e.g. encoder=dict(router=RouterConfig("switch"), d_ff=64, interval=1)."""
    model = cfg.model
    return dataclasses.replace(cfg, model=dataclasses.replace(
        model, encoder_moe=dataclasses.replace(model.encoder_moe, **(encoder or {})),
        decoder_moe=dataclasses.replace(model.decoder_moe, **(decoder or {}))))

