"""moejax vs Hugging Face torch on CPU: train step and greedy decoding of the same Switch model.

    python scripts/bench_vs_hf.py [--steps 10] [--batch 8] [--length 64]

Builds one random Switch config (T5 shape reduced to fit a CPU), converts
the HF model's weights to moejax so both run the same network, and times in
one run, alternating the two: a train step (forward + backward of the
cross-entropy loss, no optimizer update) and greedy decoding with a cache.
Both route per sequence with the same expert capacity. Prints the median
step times, tokens/s and the moejax / HF time ratio (< 1: moejax is faster):
the median over rounds of each round's ratio, with the range over rounds.
It also counts each side's matmul FLOPs per train step (moejax from the
step's jaxpr, HF with torch's FlopCounterMode) and prints the time ratio
per FLOP: capacity buffers compute every expert slot, HF's loop over
experts only the routed tokens, so the two do different amounts of work.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from moejax import convert
from moejax.layers import MOE_COLLECTION
from moejax.models import Transformer, moe_outputs
from moejax.models.decoding import generate


def hf_switch(args):
    capacity = math.ceil(1.25 * args.length / args.experts)
    cfg = transformers.SwitchTransformersConfig(
        vocab_size=args.vocab, d_model=args.d_model, d_kv=64, d_ff=4 * args.d_model,
        num_heads=args.d_model // 64, num_layers=args.layers, num_decoder_layers=args.layers,
        num_sparse_encoder_layers=args.layers // 2, num_sparse_decoder_layers=args.layers // 2,
        num_experts=args.experts, expert_capacity=capacity, router_jitter_noise=0.0,
        dropout_rate=0.0, decoder_start_token_id=0)
    torch.manual_seed(0)
    return transformers.SwitchTransformersForConditionalGeneration(cfg), capacity


def matmul_flops(jaxpr) -> int:
    """2 * m * n * k summed over the dot_generals of a jaxpr, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += (2 * math.prod(eqn.outvars[0].aval.shape)
                      * math.prod(lhs[i] for i in contracting))
        if eqn.primitive.name == "while":  # its trip count is data-dependent
            raise ValueError("cannot count FLOPs through a while loop")
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        subs = jax.extend.core.jaxprs_in_params(eqn.params)
        total += repeats * sum(matmul_flops(sub) for sub in subs)
    return total


def timed(fn, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds, each timing moejax and HF back to back (train, then "
                             "decode); which goes first alternates")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="encoder and decoder length")
    parser.add_argument("--decode_length", type=int, default=32)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--out", default="results/bench/vs_hf.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    hf, capacity = hf_switch(args)
    cfg, params = convert.from_hf(hf, capacity_factor=1.25, eval_capacity_factor=1.25)
    params = jax.device_put(params)  # numpy params would be copied in on every call
    model = Transformer(cfg)
    rng = np.random.RandomState(0)
    enc = rng.randint(2, args.vocab, (args.batch, args.length)).astype(np.int32)
    labels = rng.randint(2, args.vocab, (args.batch, args.length)).astype(np.int32)
    dec = np.concatenate([np.zeros((args.batch, 1), np.int32), labels[:, :-1]], 1)

    def loss_fn(p, e, d, y):
        logits, state = model.apply({"params": p}, e, d, y, enable_dropout=True,
                                    mutable=[MOE_COLLECTION])
        aux, _ = moe_outputs(state[MOE_COLLECTION], cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + aux

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    jax_args = [jnp.asarray(a) for a in (enc, dec, labels)]
    t_enc, t_labels = torch.tensor(enc, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
    hf.train()

    def jax_step():
        jax.block_until_ready(grad_fn(params, *jax_args))

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=t_enc, labels=t_labels).loss.backward()

    hf.eval()

    def jax_decode():
        jax.block_until_ready(generate(model, params, jax_args[0], max_length=args.decode_length,
                                       eos_id=-1).tokens)

    def hf_decode():
        with torch.no_grad():
            hf.generate(input_ids=t_enc, max_new_tokens=args.decode_length,
                        min_new_tokens=args.decode_length, do_sample=False, num_beams=1,
                        pad_token_id=0)

    for fn in (jax_step, jax_decode, hf_decode):
        fn()  # compile / warm up
    hf.train()
    with FlopCounterMode(display=False) as counter:
        hf_step()  # also its warm-up
    flops = {"moejax": matmul_flops(jax.make_jaxpr(grad_fn)(params, *jax_args).jaxpr),
             "hf": counter.get_total_flops()}
    results = {"train": {"moejax_s": [], "hf_s": []}, "decode": {"moejax_s": [], "hf_s": []}}
    runs = {"train": (jax_step, hf_step, args.steps),
            "decode": (jax_decode, hf_decode, max(2, args.steps // 3))}
    for i in range(args.rounds):  # back to back, to share machine noise
        for kind, (ours, theirs, steps) in runs.items():
            hf.train(kind == "train")
            order = [("moejax_s", ours), ("hf_s", theirs)]
            for key, fn in order[::-1] if i % 2 else order:  # who goes first alternates
                results[kind][key].append(timed(fn, steps))
    summary = {"config": vars(args), "expert_capacity": capacity, "train_matmul_flops": flops}
    tokens = {"train": args.batch * 2 * args.length, "decode": args.batch * args.decode_length}
    for kind, r in results.items():
        ours, theirs = statistics.median(r["moejax_s"]), statistics.median(r["hf_s"])
        # Each round times both back to back, so its ratio shares that
        # moment's machine load; the median over rounds drops outlier rounds.
        ratios = [a / b for a, b in zip(r["moejax_s"], r["hf_s"])]
        ratio = statistics.median(ratios)
        summary[kind] = {"moejax_s": ours, "hf_s": theirs, "ratio": ratio,
                         "round_ratios": ratios, "moejax_tokens_per_s": tokens[kind] / ours,
                         "hf_tokens_per_s": tokens[kind] / theirs}
        print(f"{kind:6s}: moejax {ours * 1e3:8.1f} ms  HF torch {theirs * 1e3:8.1f} ms  "
              f"ratio {ratio:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})  "
              f"({tokens[kind] / ours:,.0f} vs {tokens[kind] / theirs:,.0f} tokens/s)")
    # The two do different work (see the docstring), so time alone mixes
    # design and execution; per FLOP compares execution.
    per_flop = summary["train"]["ratio"] * flops["hf"] / flops["moejax"]
    summary["train"]["ratio_per_flop"] = per_flop
    print(f"train matmul work: moejax {flops['moejax'] / 1e9:.2f} GFLOP, HF torch "
          f"{flops['hf'] / 1e9:.2f} GFLOP per step; time ratio per FLOP {per_flop:.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
