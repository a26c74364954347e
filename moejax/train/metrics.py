"""Metric logging: metrics.jsonl (one JSON object per logged step) and
TensorBoard events in the workdir, on any filesystem (moejax.files). Only
process 0 writes."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from etils import epath

from moejax.files import AppendLog, is_local

# Routing metrics are logged per MoE layer and averaged over layers.
LAYER_AVERAGED = ("dropped_fraction", "experts_per_token", "router_entropy",
                  "load_balance_loss", "z_loss", "entropy_loss", "max_violation",
                  "dead_experts", "null_expert_share", "active_fraction", "relu_l1_loss",
                  "l1_coefficient")


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
    with (epath.Path(workdir) / "metrics.jsonl").open("r") as f:
        for line in f:
            row = json.loads(line)
            (evals if "eval_loss" in row else train)[row["step"]] = row
    return train, evals


class MetricWriter:
    """metrics.jsonl plus TensorBoard events, written by process 0.

    tensorboardX writes the events: TensorFlow's writer would cost every
    run a ~5 s TensorFlow import that the embedded-corpus jobs otherwise
    never need. Its own gs:// and s3:// writers need cloud SDKs; for a
    remote workdir it writes through AppendLog (epath) instead.
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        if not is_local(workdir):
            _route_tensorboard(workdir.split("://", 1)[0])
        self.jsonl = AppendLog(epath.Path(workdir) / "metrics.jsonl")
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


class _EpathEvents:
    """tensorboardX writer factory: event files through AppendLog."""

    def open(self, path):
        return AppendLog(path, binary=True)

    def directory_check(self, path):
        del path  # object stores have no directories to create


def _route_tensorboard(scheme: str) -> None:
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _EpathEvents())
