"""Metric logging: metrics.jsonl (one JSON object per logged step) and
TensorBoard events in the workdir. Only process 0 writes."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

# Routing metrics are logged per MoE layer and averaged over layers.
LAYER_AVERAGED = ("dropped_fraction", "experts_per_token", "router_entropy",
                  "load_balance_loss", "z_loss", "entropy_loss")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float | list[float]]:
    """Host values: scalars as floats, vectors (expert load) as lists, plus
    `moe/<name>` averages over MoE layers of the per-layer statistics."""
    out, per_layer = {}, {}
    for key, value in metrics.items():
        value = np.asarray(value, np.float64)
        out[prefix + key] = float(value) if value.ndim == 0 else value.tolist()
        name = key.rsplit("/", 1)[-1]
        if "/layers_" in key and name in LAYER_AVERAGED:
            per_layer.setdefault(name, []).append(float(value))
    for name, values in per_layer.items():
        out[f"{prefix}moe/{name}"] = float(np.mean(values))
    return out


def read_metrics(workdir: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl, keyed by step. A
    resumed run re-logs steps after its last checkpoint: the last record wins."""
    train, evals = {}, {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            (evals if "eval_loss" in row else train)[row["step"]] = row
    return train, evals


class MetricWriter:
    """metrics.jsonl plus TensorBoard events, written by process 0.

    tensorboardX writes the events: TensorFlow's writer would cost every
    run a ~5 s TensorFlow import that the embedded-corpus jobs otherwise
    never need.
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            if isinstance(value, list):
                for i, v in enumerate(value):
                    self.tb.add_scalar(f"{key}/{i}", v, step)
            else:
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
