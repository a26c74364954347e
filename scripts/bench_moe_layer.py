"""Forward+backward time of MoeLayer relative to a dense FFN of equal active FLOPs.

For each number of experts, router and dispatch mode, one run measures the
MoE layer and the dense FFN (d_ff * active experts per token) on the same
tokens and prints their time ratio, plus the compiled program's memory.
The fine-grained row (`fine4_top8_shared1`) turns each of E experts into 4
of d_ff / 4, routes top-8 with sigmoid scores and adds one shared expert of
d_ff / 4: 2.25 d_ff active hidden units per token, against a dense FFN of
that width.

    python scripts/bench_moe_layer.py                  # E in 8, 64, 256
    python scripts/bench_moe_layer.py --experts 8 --modes auto --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from tqdm import tqdm

from moejax.dispatch import resolve_mode
from moejax.layers import MOE_COLLECTION, MlpBlock, MoeLayer
from moejax.routing import RouterConfig, route

# name -> (RouterConfig kwargs, granularity, shared experts, active hidden units per
# token in units of d_ff). A granularity-g row splits each of the E experts into
# g experts of d_ff / g (g * E experts in all, DeepSeekMoE's fine-grained experts),
# and shared experts are of that size too.
ROUTERS = {
    "top1": (dict(name="switch", capacity_factor=1.25), 1, 0, 1.0),
    "top2": (dict(name="top_k", k=2, capacity_factor=1.25), 1, 0, 2.0),
    "expert_choice": (dict(name="expert_choice", capacity_factor=2.0), 1, 0, 2.0),
    # DeepSeek-V3-like: sigmoid scores, top-8 of 4E quarter-size experts + 1 shared.
    "fine4_top8_shared1": (dict(name="top_k", k=8, capacity_factor=1.25, score_fn="sigmoid"),
                           4, 1, 2.25),
}


def timed_pair(moe, dense, repeats):
    """Median seconds of two (fn, args) pairs, run alternately so that
    machine load drifts hit both alike."""
    for fn, args in (moe, dense):
        jax.block_until_ready(fn(*args))  # compile and warm up
    times = ([], [])
    for _ in range(repeats):
        for (fn, args), out in zip((moe, dense), times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def memory_mb(fn, args):
    stats = fn.lower(*args).compile().memory_analysis()
    if stats is None:
        return float("nan")
    total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    return total / 2**20


def fwd_bwd(module, variables, x):
    train = {"deterministic": False, "rngs": {"router": jax.random.PRNGKey(1)}} \
        if isinstance(module, MoeLayer) else {}

    def loss(params, x):
        y, _ = module.apply({**variables, "params": params}, x, mutable=[MOE_COLLECTION], **train)
        return jnp.sum(y.astype(jnp.float32) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def prepare(x, module):
    """(jitted forward+backward, its arguments) for `module` on `x`."""
    variables = nn.unbox(module.init(jax.random.PRNGKey(0), x))
    variables.pop(MOE_COLLECTION, None)
    return fwd_bwd(module, variables, x), (variables["params"], x)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    parser.add_argument("--modes", nargs="+", default=["einsum", "scatter", "dropless", "auto"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--group_size", type=int, default=512)
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--d_ff", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="results/bench/bench_moe_layer.json")
    args = parser.parse_args()

    x = jax.random.normal(jax.random.PRNGKey(2), (args.batch, args.length, args.d_model))
    dense, rows = {}, []
    jobs = [(e, r, m) for e in args.experts for r in args.routers for m in args.modes]
    for e, router, mode in tqdm(jobs, desc="bench", unit="config"):
        kwargs, granularity, shared, active = ROUTERS[router]
        if active not in dense:
            dense_run = prepare(x, MlpBlock(d_ff=round(args.d_ff * active)))
            dense[active] = dense_run, memory_mb(*dense_run)
        (dense_run, dense_mb) = dense[active]
        e *= granularity
        cfg = RouterConfig(num_experts=e, **kwargs)
        moe = prepare(x, MoeLayer(cfg, d_ff=args.d_ff // granularity, dispatch=mode,
                                  group_size=args.group_size, num_shared_experts=shared))
        moe_s, dense_s = timed_pair(moe, dense_run, args.repeats)
        moe_mb = memory_mb(*moe)
        logits = jnp.zeros((x.shape[0] * x.shape[1] // args.group_size, args.group_size, e))
        probe = route(cfg, logits, rng=jax.random.PRNGKey(0), train=True)
        rows.append(dict(experts=e, router=router, mode=mode, resolved=resolve_mode(mode, probe),
                         moe_ms=1e3 * moe_s, dense_ms=1e3 * dense_s, ratio=moe_s / dense_s,
                         moe_mb=moe_mb, dense_mb=dense_mb))

    print(f"\nbackend={jax.default_backend()} cpus={os.cpu_count()} "
          f"tokens={x.shape[0] * x.shape[1]} "
          f"d_model={args.d_model} d_ff={args.d_ff} group={args.group_size} (forward+backward)")
    print(f"{'E':>4} {'router':<18} {'mode':<9} {'runs as':<9} {'moe ms':>8} {'dense ms':>9} "
          f"{'ratio':>6} {'moe MB':>8} {'dense MB':>9}")
    for r in rows:
        print(f"{r['experts']:>4} {r['router']:<18} {r['mode']:<9} {r['resolved']:<9} "
              f"{r['moe_ms']:>8.1f} {r['dense_ms']:>9.1f} {r['ratio']:>6.2f} {r['moe_mb']:>8.1f} "
              f"{r['dense_mb']:>9.1f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "backend": jax.default_backend(), "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
