"""Trainer throughput and MFU on this machine, and the share of each step
spent outside the jitted train step (input pipeline, logging, checkpointing).

    python scripts/bench_train.py [--steps 60]
    python scripts/bench_train.py --configs switch-base-8 t5-base-dense --steps 30 \
        --dtype bfloat16 --remat none full --scan_layers false true     # a GPU's rows

For each config (the embedded default, and a Switch-Base-shaped model cut
down to fit a CPU; on an accelerator the full Switch-Base-8 shape and its
dense twin, batch 16 x (512 + 512)) it runs the real training loop
(`moejax.train.train`, checkpointing twice, logging every step) and then
times the same jitted train step (optimizer included) alone on one batch.
outside = 1 - jitted / loop step time (target < 5%).

MFU = model FLOPs per second / the peak FLOP/s measured in the same run
(a square matmul in the model's compute dtype). Model FLOPs come from the
config (moejax.models.flops: matmuls, experts at their nominal active
count, 3x the forward pass). --remat and --scan_layers compile the step once
per combination (from a fresh state) and report its compile time, step time
and the compiled program's memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from moejax.data.pipeline import Pipeline
from moejax.models import T5Config, presets
from moejax.models.flops import train_flops_per_example
from moejax.structured import from_mapping, load_config_file
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


def full_shape(model: T5Config) -> Callable[[TrainConfig], TrainConfig]:
    """The accelerator rows: a model at batch 16 x (512 + 512), vocab 32128."""
    def make(base: TrainConfig) -> TrainConfig:
        data = dataclasses.replace(base.data, inputs_length=512, targets_length=512)
        return dataclasses.replace(base, model=dataclasses.replace(model, dropout_rate=0.0),
                                   data=data, batch_size=16)
    return make


CONFIGS = {
    "default": lambda base: base,
    "switch-reduced": switch_reduced,
    "switch-base-8": full_shape(presets.switch_base(8)),
    "t5-base-dense": full_shape(dataclasses.replace(presets.switch_base(8),
                                                    encoder_moe=presets.MoeConfig(),
                                                    decoder_moe=presets.MoeConfig())),
}


def peak_flops(dtype, n: int) -> float:
    """FLOP/s of an n x n x n matmul in `dtype`: the MFU denominator."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(7):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def time_step(step, state, batch, repeats: int):
    """(median seconds of the compiled step, the state after: the step donates its input)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]), state


def memory_mb(step) -> float:
    """Memory of a compiled step (arguments, outputs, temporaries)."""
    stats = step.memory_analysis()
    if stats is None:
        return float("nan")
    return (stats.temp_size_in_bytes + stats.argument_size_in_bytes
            + stats.output_size_in_bytes) / 2**20


def bench(name: str, cfg: TrainConfig, steps: int, peak: float, remats, scans) -> dict:
    cfg = dataclasses.replace(cfg, steps=steps, eval_every_steps=0, log_every_steps=1,
                              checkpoint=dataclasses.replace(cfg.checkpoint,
                                                             every_steps=steps // 2))
    example_flops = train_flops_per_example(cfg.model, cfg.data.inputs_length,
                                            cfg.data.targets_length)
    tokens = cfg.batch_size * (cfg.data.inputs_length + cfg.data.targets_length)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train(cfg, workdir)
        rows = [row for _, row in sorted(read_metrics(workdir)[0].items())]
        # (the trainer times no compiling step; compile_s below is compilation)
        loop = statistics.median(r["step_time_s"] for r in rows[len(rows) // 4:])
        s = dataclasses.replace(setup(cfg, workdir), batch_spec=None)  # traced below
        batch = global_batch(s, next(iter(Pipeline(cfg.data, s.vocab, s.objective, "train",
                                                   cfg.batch_size // s.num_shards, s.shards,
                                                   s.num_shards))))
        repeats = max(10, steps // 3)
        variants = {}
        for scan in scans:  # the same batch; only the layers' layout and remat differ
            for remat in remats:
                model = dataclasses.replace(s.cfg.model, remat=remat, scan_layers=scan)
                sr = dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, model=model),
                                         model=s.model.clone(config=model))
                c = compile_steps(sr)
                with sr.layout.context():  # lowered as the trainer's loop lowers it
                    state = c.init(jax.random.key(0))
                    begin = time.perf_counter()
                    step = c.train_step.lower(c.abstract_state, batch).compile()
                    compile_s = time.perf_counter() - begin
                step_s, state = time_step(step, state, batch, repeats)
                variants[f"scan_layers={scan},remat={remat}"] = {
                    "jitted_step_s": step_s, "compile_s": compile_s, "memory_mb": memory_mb(step)}
                del state
        jitted = next(iter(variants.values()))["jitted_step_s"]
    mfu = lambda step_s: example_flops * cfg.batch_size / step_s / peak
    result = {"config": name, "loop_step_s": loop, "jitted_step_s": jitted,
              "wall_s": time.perf_counter() - start,
              "outside_fraction": max(0.0, 1 - jitted / loop), "tokens_per_s": tokens / loop,
              "model_flops_per_example": example_flops, "peak_flops": peak,
              "mfu_loop": mfu(loop), "mfu_jitted": mfu(jitted), "variants": variants}
    print(f"{name:16s} step {loop * 1e3:7.1f} ms (jitted {jitted * 1e3:7.1f} ms)  "
          f"{tokens / loop:9,.0f} tokens/s  MFU {mfu(loop):.1%} (jitted {mfu(jitted):.1%})  "
          f"outside the jitted step: {result['outside_fraction']:.1%}", flush=True)
    for variant, r in variants.items():
        print(f"{'':16s} {variant:<36s} compile {r['compile_s']:6.1f} s  jitted "
              f"{r['jitted_step_s'] * 1e3:7.1f} ms  memory {r['memory_mb']:8.1f} MB", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        default=["default", "switch-reduced"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="model.dtype for every config (default: the config's)")
    parser.add_argument("--attention", default=None, help="model.attention for every config")
    parser.add_argument("--remat", nargs="+", default=None,
                        help="model.remat settings to compile and time (default: the config's)")
    parser.add_argument("--scan_layers", nargs="+", choices=["false", "true"], default=None,
                        help="model.scan_layers settings to compile and time (default: the "
                             "config's)")
    parser.add_argument("--peak_size", type=int, default=None,
                        help="matmul size of the peak measurement (default: 2048 on CPU, "
                             "8192 elsewhere)")
    parser.add_argument("--out", default="results/bench/train.json")
    args = parser.parse_args()
    base = from_mapping(TrainConfig, load_config_file(os.path.join(ROOT, "configs", "default.py")))
    results, peaks = [], {}
    for name in args.configs:
        cfg = CONFIGS[name](base)
        changes = {k: v for k, v in (("dtype", args.dtype), ("attention", args.attention))
                   if v is not None}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))
        dtype = cfg.model.compute_dtype
        if dtype not in peaks:
            size = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
            peaks[dtype] = peak_flops(dtype, size)
            print(f"peak {jnp.dtype(dtype).name} matmul {size}^3: {peaks[dtype] / 1e12:.3f} "
                  f"TFLOP/s ({jax.devices()[0].device_kind})", flush=True)
        scans = [v == "true" for v in args.scan_layers] if args.scan_layers else \
            [cfg.model.scan_layers]
        results.append(bench(name, cfg, args.steps, peaks[dtype], args.remat or [cfg.model.remat],
                             scans))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                   "jax": jax.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
