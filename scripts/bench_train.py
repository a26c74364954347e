"""Trainer throughput on this machine, and the share of each step spent
outside the jitted train step (input pipeline, logging, checkpointing).

    python scripts/bench_train.py [--steps 60]

For each config (the embedded default, and a Switch-Base-shaped model cut
down to fit a CPU) it runs the real training loop (`moejax.train.train`,
checkpointing twice, logging every step) and then times the same jitted
train step alone on one batch. outside = 1 - jitted / loop step time.
Target: outside < 5%.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import jax

from moejax.data.pipeline import Pipeline
from moejax.models import presets
from moejax.structured import from_mapping, load_config_file
from moejax.train.checkpoint import Checkpoints
from moejax.train.config import TrainConfig
from moejax.train.metrics import read_metrics
from moejax.train.trainer import compile_steps, global_batch, setup, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def switch_reduced(base: TrainConfig) -> TrainConfig:
    """Switch-Base-8 routing and layout (top-1 every other layer, ReLU,
    tied embeddings) at d_model 256, 4+4 layers."""
    model = dataclasses.replace(presets.switch_base(8), vocab_size=4096, d_model=256, num_heads=4,
                                d_ff=1024, num_encoder_layers=4, num_decoder_layers=4,
                                dropout_rate=0.0)
    return dataclasses.replace(base, model=model, batch_size=16)


def bench(name: str, cfg: TrainConfig, steps: int) -> dict:
    cfg = dataclasses.replace(cfg, steps=steps, eval_every_steps=0, log_every_steps=1,
                              checkpoint=dataclasses.replace(cfg.checkpoint,
                                                             every_steps=steps // 2))
    with tempfile.TemporaryDirectory() as workdir:
        train(cfg, workdir)
        rows = [row for _, row in sorted(read_metrics(workdir)[0].items())]
        loop = statistics.median(r["step_time_s"] for r in rows[len(rows) // 4:])  # past compile
        s = setup(cfg, workdir)
        compiled = compile_steps(s)
        checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
        state = checkpoints.restore(steps, compiled.abstract_state)[0]
        checkpoints.close()
        batch = global_batch(s, next(iter(Pipeline(cfg.data, s.vocab, s.objective, "train",
                                                   cfg.batch_size // s.num_shards, s.shards,
                                                   s.num_shards))))
        times = []
        with s.layout.context():  # the context the trainer's loop runs in
            for _ in range(max(10, steps // 3)):
                start = time.perf_counter()
                state, metrics = compiled.train_step(state, batch)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
        jitted = statistics.median(times[2:])
    tokens = cfg.batch_size * (cfg.data.inputs_length + cfg.data.targets_length)
    result = {"config": name, "loop_step_s": loop, "jitted_step_s": jitted,
              "outside_fraction": max(0.0, 1 - jitted / loop), "tokens_per_s": tokens / loop}
    print(f"{name:16s} step {loop * 1e3:7.1f} ms (jitted {jitted * 1e3:7.1f} ms)  "
          f"{tokens / loop:9,.0f} tokens/s  outside the jitted step: "
          f"{result['outside_fraction']:.1%}", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="results/bench/train.json")
    args = parser.parse_args()
    base = from_mapping(TrainConfig, load_config_file(os.path.join(ROOT, "configs", "default.py")))
    results = [bench("default", base, args.steps),
               bench("switch-reduced", switch_reduced(base), args.steps)]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
