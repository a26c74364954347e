"""Routing report of a run trained with --config.trace_routing_every_steps=N.

    python scripts/routing_report.py WORKDIR [--out DIR]

Reads WORKDIR/routing_traces (moejax.train.traces: each MoE layer's routing
of one fixed held-out batch at every traced step) and writes to DIR
(default WORKDIR/routing_report):
- load.png: each layer's expert load (share of its assignments) over
  training, one heatmap per layer (experts x traced steps);
- specialisation.png: per layer over training, the NMI between each real
  token's first expert (its largest combine weight) and its token id, and
  its document's domain where the corpus has domains (the testbed's);
- stability.png: per layer, the fraction of real tokens whose first expert
  changed since the previous traced step;
- experts_per_token.png: per layer, the histogram of experts per token at
  the last traced step;
and prints the last step's figures as a table.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moejax.train.traces import read_traces  # noqa: E402


def real_tokens(inputs: dict, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(bool mask [B, L] of the real positions, token ids [B, L]) of the
    stack `layer` belongs to."""
    if layer.startswith("encoder"):
        tokens = inputs["encoder_input_tokens"]
        return tokens > 0, tokens
    return inputs["decoder_target_tokens"] > 0, inputs["decoder_input_tokens"]


def layer_stats(inputs: dict, traces: dict[int, dict[str, np.ndarray]]) -> dict:
    """{layer: {'steps', 'load' [S, E], 'nmi_token' [S], 'nmi_domain' [S] or
    None, 'changed' [S - 1], 'hist' [E + 1] (last step)}}."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    steps = sorted(traces)
    out = {}
    for layer in sorted(traces[steps[-1]]):
        mask, tokens = real_tokens(inputs, layer)
        domain = (np.broadcast_to(inputs["domain"][:, None], mask.shape)[mask]
                  if "domain" in inputs else None)
        load, nmi_token, nmi_domain, firsts = [], [], [], []
        for step in steps:
            w = traces[step][layer][mask]  # [N, E]
            chosen = w > 0
            load.append(chosen.sum(0) / max(chosen.sum(), 1))
            first = np.where(chosen.any(1), w.argmax(1), -1)  # -1: no expert
            firsts.append(first)
            nmi_token.append(nmi(tokens[mask], first))
            if domain is not None:
                nmi_domain.append(nmi(domain, first))
        counts = (traces[steps[-1]][layer][mask] > 0).sum(1)
        e = traces[steps[-1]][layer].shape[-1]
        out[layer] = {
            "steps": steps, "load": np.array(load), "nmi_token": np.array(nmi_token),
            "nmi_domain": np.array(nmi_domain) if domain is not None else None,
            "changed": np.array([np.mean(a != b) for a, b in zip(firsts, firsts[1:])]),
            "hist": np.bincount(counts, minlength=e + 1) / max(len(counts), 1)}
    return out


def _grid(n: int):
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def draw(stats: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    layers = list(stats)
    paths = []
    rows, cols = _grid(len(layers))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        s = stats[layer]
        e = s["load"].shape[1]
        image = ax.imshow(s["load"].T, aspect="auto", cmap="viridis", vmin=0,
                          vmax=max(2.0 / e, float(s["load"].max())), interpolation="nearest")
        ticks = np.linspace(0, len(s["steps"]) - 1, min(5, len(s["steps"]))).astype(int)
        ax.set_xticks(ticks, [str(s["steps"][i]) for i in ticks], fontsize=7)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("expert", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, label=f"load share (balanced {1 / e:.3f})")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle("Expert load over training (traced batch)", fontsize=11)
    fig.tight_layout()
    paths.append(os.path.join(out, "load.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    domains = any(s["nmi_domain"] is not None for s in stats.values())
    fig, axes = plt.subplots(1, 2 if domains else 1, figsize=(11 if domains else 6, 4),
                             squeeze=False)
    for layer, s in stats.items():
        axes[0, 0].plot(s["steps"], s["nmi_token"], marker=".", label=layer)
        if domains:
            axes[0, 1].plot(s["steps"], s["nmi_domain"], marker=".", label=layer)
    axes[0, 0].set_title("NMI(first expert, token id)", fontsize=10)
    if domains:
        axes[0, 1].set_title("NMI(first expert, document domain)", fontsize=10)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.set_ylabel("NMI (0 = unrelated, 1 = determined)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "specialisation.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for layer, s in stats.items():
        if len(s["changed"]):
            ax.plot(s["steps"][1:], s["changed"], marker=".", label=layer)
    ax.set_title("Routing stability: first expert changed since the previous trace",
                 fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of real tokens")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "stability.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        hist = stats[layer]["hist"]
        ax.bar(np.arange(len(hist)), hist)
        mean = float(np.sum(np.arange(len(hist)) * hist))
        ax.set_title(f"{layer} (mean {mean:.2f})", fontsize=9)
        ax.set_xlabel("experts per token", fontsize=8)
        ax.set_ylabel("fraction of tokens", fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(f"Experts per token at step {stats[layers[0]]['steps'][-1]}", fontsize=11)
    fig.tight_layout()
    paths.append(os.path.join(out, "experts_per_token.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def table(stats: dict) -> str:
    lines = ["| layer | max load / mean - 1 | NMI token | NMI domain | first expert changed | "
             "experts per token |", "|---|---|---|---|---|---|"]
    for layer, s in stats.items():
        load = s["load"][-1]
        domain = f"{s['nmi_domain'][-1]:.3f}" if s["nmi_domain"] is not None else "-"
        changed = f"{s['changed'][-1]:.3f}" if len(s["changed"]) else "-"
        per_token = float(np.sum(np.arange(len(s["hist"])) * s["hist"]))
        lines.append(f"| {layer} | {load.max() * len(load) - 1:.3f} | {s['nmi_token'][-1]:.3f} "
                     f"| {domain} | {changed} | {per_token:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="default: WORKDIR/routing_report")
    args = parser.parse_args(argv)
    try:
        inputs, traces = read_traces(args.workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not traces:
        print(f"error: {args.workdir}/routing_traces has no traced step yet", file=sys.stderr)
        return 2
    stats = layer_stats(inputs, traces)
    paths = draw(stats, args.out or os.path.join(args.workdir, "routing_report"))
    print(f"Step {max(traces)} ({len(traces)} traced steps):")
    print(table(stats))
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
