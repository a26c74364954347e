"""MoeLayer and the raw grouped matmul against dense, forward+backward.

Layer rows: for each number of experts, router, dispatch mode and (for
dropless) grouped-matmul kernel, one run times the MoE layer and a dense
FFN of equal active FLOPs (d_ff * active experts per token) on the same
tokens, alternately, and prints their time ratio and compiled memory.
The fine-grained row (`fine4_top8_shared1`) turns each of E experts into 4
of d_ff / 4, routes top-8 with sigmoid scores and adds one shared expert of
d_ff / 4: 2.25 d_ff active hidden units per token, against a dense FFN of
that width.

Raw rows (--raw): the grouped matmul alone, x [M, d_model] (M = tokens * 2
assignments, sorted by expert, random group sizes) @ w [E, d_model, d_ff],
against one dense matmul of the same rows, forward and forward+backward,
in TFLOP/s. On a Hopper GPU --tiles also sweeps the Mosaic GPU tiles.

    python scripts/bench_moe_layer.py                       # CPU, E in 8, 64, 256
    python scripts/bench_moe_layer.py --experts 8 --modes auto --repeats 3
    python scripts/bench_moe_layer.py --preset h100 --raw --tiles   # the GPU check's rows

A configuration that fails (out of memory, a kernel error) is a row with
its one-line error, not the end of the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from moejax.dispatch import available_grouped_matmuls, grouped_kernel, resolve_mode
from moejax.dispatch.blocks import Blocks
from moejax.dispatch.grouped import grouped_matmul
from moejax.dispatch.pallas import GpuTiles, MosaicGpu
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
# Shapes (the issue's H100 rows: 8 x 2048 tokens, d_model 1024, d_ff 4096,
# groups of 2048), and (experts, router) jobs; 16 x 4 fine-grained = 64 experts
# of d_ff / 4 on the CPU preset, 64 x 4 = 256 on h100.
PRESETS = {
    "cpu": dict(batch=8, length=512, group_size=512, d_model=128, d_ff=512,
                jobs=[(8, "top2"), (64, "top2"), (16, "fine4_top8_shared1")]),
    "h100": dict(batch=8, length=2048, group_size=2048, d_model=1024, d_ff=4096,
                 jobs=[(8, "top2"), (64, "top2"), (64, "fine4_top8_shared1")]),
    # The GPU check's dry run on CPU: every code path, in seconds.
    "tiny": dict(batch=2, length=64, group_size=64, d_model=32, d_ff=64,
                 jobs=[(8, "top2"), (4, "fine4_top8_shared1")]),
}
# Mosaic GPU tile candidates for --tiles (within H100 shared memory at bf16).
TILE_CANDIDATES = [GpuTiles(), GpuTiles(max_concurrent_steps=3, grid_block_n=2),
                   GpuTiles(block_m=64), GpuTiles(block_n=64), GpuTiles(block_m=192,
                                                                         max_concurrent_steps=3)]
EINSUM_MAX_EXPERTS = 64  # its one-hot tensors grow with E * capacity
# The accelerator targets (issue "MoE at dense speed"): the best layer mode's
# time over dense, by (router, experts); the best grouped matmul's forward
# TFLOP/s as a share of the dense matmul's, by experts.
LAYER_TARGETS = {("top2", 8): 1.15, ("top2", 64): 1.3, ("fine4_top8_shared1", 256): 1.6}
RAW_TARGETS = {8: 0.70, 64: 0.60}


def timed(fns, repeats):
    """Median seconds of each (fn, args), run in turn so that load drifts hit all alike."""
    for fn, args in fns:
        jax.block_until_ready(fn(*args))  # compile and warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for (fn, args), out in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def memory_mb(compiled):
    stats = compiled.memory_analysis()
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
    """(compiled forward+backward, its arguments) for `module` on `x`:
    compiled once, for both the timing and the memory figure."""
    variables = nn.unbox(module.init(jax.random.PRNGKey(0), x))
    variables.pop(MOE_COLLECTION, None)
    args = (variables["params"], x)
    return fwd_bwd(module, variables, x).lower(*args).compile(), args


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" if str(e) else \
        type(e).__name__


def layer_rows(args, x, dtype, jobs, rows, save):
    dense = {}
    work = []
    for e, router in jobs:
        for mode in args.modes:
            if mode == "einsum" and e * ROUTERS[router][1] > EINSUM_MAX_EXPERTS:
                continue
            kernels = args.grouped_matmuls if mode == "dropless" else [None]
            work += [(e, router, mode, k) for k in kernels]
    for e, router, mode, kernel in tqdm(work, desc="layer", unit="config"):
        kwargs, granularity, shared, active = ROUTERS[router]
        experts = e * granularity
        row = dict(experts=experts, router=router, mode=mode, grouped_matmul=kernel)
        try:
            if active not in dense:
                run = prepare(x, MlpBlock(d_ff=round(args.d_ff * active), dtype=dtype))
                dense[active] = run, memory_mb(run[0])
            dense_run, dense_mb = dense[active]
            cfg = RouterConfig(num_experts=experts, **kwargs)
            moe = prepare(x, MoeLayer(cfg, d_ff=args.d_ff // granularity, dispatch=mode,
                                      grouped_matmul=kernel, group_size=args.group_size,
                                      num_shared_experts=shared, dtype=dtype))
            moe_s, dense_s = timed([moe, dense_run], args.repeats)
            logits = jnp.zeros((x.shape[0] * x.shape[1] // args.group_size, args.group_size,
                                experts))
            probe = route(cfg, logits, rng=jax.random.PRNGKey(0), train=True)
            row.update(resolved=resolve_mode(mode, probe), moe_ms=1e3 * moe_s,
                       dense_ms=1e3 * dense_s, ratio=moe_s / dense_s, moe_mb=memory_mb(moe[0]),
                       dense_mb=dense_mb)
        except Exception as err:  # noqa: BLE001 - an OOM or kernel failure is a result
            row["error"] = one_line(err)
        rows.append(row)
        save()


def raw_rows(args, dtype, expert_counts, tile_sweep, rows, save):
    """The grouped matmul alone vs one dense matmul of the same rows."""
    m, k, n = args.batch * args.length * 2, args.d_model, args.d_ff
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(m, k)), dtype)
    dense_w = jnp.asarray(rng.normal(size=(k, n)) / np.sqrt(k), dtype)
    dense = jax.jit(lambda x, w: x @ w)
    dense_grad = jax.jit(jax.grad(lambda x, w: jnp.sum((x @ w).astype(jnp.float32)),
                                  argnums=(0, 1)))
    flops = 2 * m * k * n
    work = []
    for i, e in enumerate(expert_counts):
        for name in args.grouped_matmuls:
            work.append((e, name, None))
            if tile_sweep and name == "mosaic_gpu" and i < 2:  # E=8 and 64: the targets' rows
                work += [(e, name, t) for t in TILE_CANDIDATES[1:]]
    for e, name, tiles in tqdm(work, desc="raw", unit="config"):
        row = dict(experts=e, grouped_matmul=name, m=m, k=k, n=n,
                   tiles=None if tiles is None else dataclasses.asdict(tiles))
        try:
            kernel = MosaicGpu(tiles=tiles) if tiles else grouped_kernel(name, dtype)
            gs = jnp.asarray(np.bincount(rng.integers(0, e, m), minlength=e), jnp.int32)
            w = jnp.asarray(rng.normal(size=(e, k, n)) / np.sqrt(k), dtype)
            fwd = jax.jit(lambda x, w, gs=gs, kern=kernel: grouped_matmul(x, w, gs, kern))
            grad = jax.jit(jax.grad(
                lambda x, w, gs=gs, kern=kernel: jnp.sum(
                    grouped_matmul(x, w, gs, kern).astype(jnp.float32)), argnums=(0, 1)))
            # Checked against the blocked kernel (tested against float64 on CPU).
            want = jax.jit(lambda x, w, gs=gs: grouped_matmul(x, w, gs, Blocks()))(x, w)
            got = fwd(x, w)
            row["max_rel_err"] = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))
                                       / jnp.max(jnp.abs(want.astype(jnp.float32))))
            del want, got
            g_f, d_f, g_b, d_b = timed([(fwd, (x, w)), (dense, (x, dense_w)), (grad, (x, w)),
                                        (dense_grad, (x, dense_w))], args.repeats)
            row.update(fwd_ms=1e3 * g_f, dense_fwd_ms=1e3 * d_f, fwd_bwd_ms=1e3 * g_b,
                       dense_fwd_bwd_ms=1e3 * d_b, fwd_tflops=flops / g_f / 1e12,
                       dense_fwd_tflops=flops / d_f / 1e12,
                       fwd_bwd_tflops=3 * flops / g_b / 1e12,
                       dense_fwd_bwd_tflops=3 * flops / d_b / 1e12,
                       fwd_share_of_dense=d_f / g_f, fwd_bwd_ratio=g_b / d_b)
        except Exception as err:  # noqa: BLE001
            row["error"] = one_line(err)
        rows.append(row)
        save()


def print_tables(layer, raw):
    if layer:
        print(f"\n{'E':>4} {'router':<18} {'mode':<9} {'kernel':<11} {'runs as':<9} "
              f"{'moe ms':>8} {'dense ms':>9} {'ratio':>6} {'moe MB':>8} {'dense MB':>9}")
        for r in layer:
            head = (f"{r['experts']:>4} {r['router']:<18} {r['mode']:<9} "
                    f"{r['grouped_matmul'] or '-':<11} ")
            if "error" in r:
                print(head + r["error"][:120])
                continue
            print(head + f"{r['resolved']:<9} {r['moe_ms']:>8.2f} {r['dense_ms']:>9.2f} "
                  f"{r['ratio']:>6.2f} {r['moe_mb']:>8.1f} {r['dense_mb']:>9.1f}")
    if raw:
        print(f"\n{'E':>4} {'kernel':<11} {'tiles':<24} {'fwd TF/s':>9} {'dense':>7} "
              f"{'share':>6} {'f+b TF/s':>9} {'dense':>7} {'ratio':>6} {'rel err':>8}")
        for r in raw:
            tiles = "default" if r["tiles"] is None else ",".join(map(str, r["tiles"].values()))
            head = f"{r['experts']:>4} {r['grouped_matmul']:<11} {tiles:<24} "
            if "error" in r:
                print(head + r["error"][:120])
                continue
            print(head + f"{r['fwd_tflops']:>9.1f} {r['dense_fwd_tflops']:>7.1f} "
                  f"{r['fwd_share_of_dense']:>6.2f} {r['fwd_bwd_tflops']:>9.1f} "
                  f"{r['dense_fwd_bwd_tflops']:>7.1f} {r['fwd_bwd_ratio']:>6.2f} "
                  f"{r['max_rel_err']:>8.1e}")


def target_lines(layer, raw):
    """One line per target: the best measured value, the bar, met or not."""
    lines = []
    for (router, experts), bar in LAYER_TARGETS.items():
        ok = [r for r in layer if (r["router"], r["experts"]) == (router, experts) and "ratio" in r]
        if ok:
            best = min(ok, key=lambda r: r["ratio"])
            lines.append(f"layer {router} E={experts}: best {best['mode']}"
                         f"{'/' + best['grouped_matmul'] if best['grouped_matmul'] else ''} "
                         f"{best['ratio']:.2f}x dense (target <= {bar}) "
                         f"{'met' if best['ratio'] <= bar else 'NOT met'}")
    for experts, bar in RAW_TARGETS.items():
        ok = [r for r in raw if r["experts"] == experts and "fwd_share_of_dense" in r]
        if ok:
            best = max(ok, key=lambda r: r["fwd_share_of_dense"])
            lines.append(f"grouped matmul E={experts}: best {best['grouped_matmul']} forward "
                         f"{best['fwd_share_of_dense']:.2f} of dense TFLOP/s (target >= {bar}) "
                         f"{'met' if best['fwd_share_of_dense'] >= bar else 'NOT met'}")
    return lines


def markdown(data: dict) -> str:
    """The docs' table of one run (docs/benchmarks.md quotes it; a test keeps
    them equal): per (E, router), MoE time / dense time (MoE MB) per mode,
    dropless with the blocked kernel, auto with the mode it chose."""
    modes = ("einsum", "scatter", "dropless", "auto")
    rows = [r for r in data["rows"] if "ratio" in r
            and r["grouped_matmul"] in (None, "blocks")]
    lines = ["| E | router | einsum | scatter | dropless (blocks) | auto |",
             "|---|---|---|---|---|---|"]
    for e, router in dict.fromkeys((r["experts"], r["router"]) for r in rows):
        cells = []
        for mode in modes:
            r = next((r for r in rows if (r["experts"], r["router"], r["mode"]) ==
                      (e, router, mode)), None)
            cell = "-" if r is None else f"{r['ratio']:.2f} ({r['moe_mb']:.0f})"
            cells.append(cell + (f" = {r['resolved']}" if r and mode == "auto" else ""))
        lines.append(f"| {e} | {router} | " + " | ".join(cells) + " |")
    dense = {}
    for r in rows:  # top1 runs the dense FFN at d_ff x1, the others at x2
        dense.setdefault(r["dense_mb"], []).append(r["dense_ms"])
    programs = ", ".join(f"{mb:.0f} MB, {statistics.median(ms):.0f} ms"
                         for mb, ms in sorted(dense.items()))
    a = data["args"]
    return "\n".join([
        f"{data['device']} (jax {data['jax']}, {a['batch'] * a['length']} tokens, d_model="
        f"{a['d_model']}, d_ff={a['d_ff']} per expert, groups of {a['group_size']}, "
        f"forward+backward, median of {a['repeats']} alternating runs). Cells: MoE time / "
        "dense time (MoE MB of the compiled program); `auto` shows the mode it chose.", "",
        *lines, "", f"Dense FFN programs (d_ff x1, x2; median step): {programs}."])


def report(paths, as_markdown: bool = False):
    """Tables and targets of benchmark JSON files written by this script."""
    layer, raw = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if as_markdown:
            print(markdown(data))
            continue
        print(f"{path}: {data['device']}, jax {data['jax']}, {data['args']['dtype']}")
        layer += data["rows"]
        raw += data["raw"]
    if not as_markdown:
        print_tables(layer, raw)
        print("\n".join(["", *target_lines(layer, raw)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--experts", type=int, nargs="+", default=None,
                        help="expert counts (before granularity), for every --routers")
    parser.add_argument("--routers", nargs="+", default=None, choices=list(ROUTERS))
    parser.add_argument("--modes", nargs="+", default=["einsum", "scatter", "dropless", "auto"])
    parser.add_argument("--grouped_matmuls", nargs="+", default=None,
                        help="kernels for dropless rows (default: all available here except "
                             "ragged_dot off TPU, which XLA expands into a dense product)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    for name in ("batch", "length", "group_size", "d_model", "d_ff"):
        parser.add_argument(f"--{name}", type=int, default=None, help="overrides the preset")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--raw", action="store_true", help="also time the raw grouped matmul")
    parser.add_argument("--tiles", action="store_true", help="with --raw: sweep Mosaic GPU tiles")
    parser.add_argument("--no_layer", action="store_true", help="raw rows only")
    parser.add_argument("--out", default="results/bench/bench_moe_layer.json")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="print the tables and targets of earlier runs' files and exit")
    parser.add_argument("--markdown", action="store_true",
                        help="with --report: the markdown table docs/benchmarks.md quotes")
    args = parser.parse_args()
    if args.report:
        return report(args.report, args.markdown)
    preset = PRESETS[args.preset]
    for name in ("batch", "length", "group_size", "d_model", "d_ff"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    jobs = preset["jobs"] if args.experts is None and args.routers is None else [
        (e, r) for e in (args.experts or [8, 64, 256]) for r in (args.routers or list(ROUTERS))]
    backend = jax.default_backend()
    if args.grouped_matmuls is None:
        args.grouped_matmuls = [k for k in available_grouped_matmuls()
                                if k != "ragged_dot" or backend == "tpu"]
        if args.dtype == "float32" and "mosaic_gpu" in args.grouped_matmuls:
            args.grouped_matmuls.remove("mosaic_gpu")  # it takes 16-bit inputs
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    device_name = getattr(device, "device_kind", device.platform)
    result = {"args": vars(args), "backend": backend, "jax": jax.__version__,
              "device": device_name, "rows": [], "raw": []}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    def save():  # after every row: a run cut short by a time limit keeps what it measured
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    x = jax.random.normal(jax.random.PRNGKey(2), (args.batch, args.length, args.d_model), dtype)
    if not args.no_layer:
        layer_rows(args, x, dtype, jobs, result["rows"], save)
    if args.raw:
        experts = sorted({e * ROUTERS[r][1] for e, r in jobs})
        raw_rows(args, dtype, experts, args.tiles, result["raw"], save)
    save()
    print(f"\nbackend={backend} device={device_name} cpus={os.cpu_count()} dtype={args.dtype} "
          f"tokens={args.batch * args.length} d_model={args.d_model} d_ff={args.d_ff} "
          f"group={args.group_size} (forward+backward)")
    print_tables(result["rows"], result["raw"])
    print("\n".join(["", *target_lines(result["rows"], result["raw"])]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
