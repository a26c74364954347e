"""Routing traces: every MoE layer's routing of one fixed held-out batch,
saved every `trace_routing_every_steps` steps for scripts/routing_report.py.

Files, under `<workdir>/routing_traces/` (any filesystem etils.epath
reaches; process 0 writes):
- `inputs.npz`: the batch, `encoder_input_tokens` [B, L_in],
  `decoder_input_tokens` and `decoder_target_tokens` [B, L_dec] (0 =
  padding), and for corpora with domains (moejax.data.sources
  `held_out_documents`: the testbed's) `domain` int [B] indexing
  `domain_names`; then the batch is B held-out documents, one a row, the
  encoder reading the document's start and the decoder its first tokens.
  Otherwise it is the first evaluation batch and `domain` is absent.
- `step_<step>.npz`: per MoE layer, key 'encoder/layers_1' and so on,
  float16 [B, L, E], each token's combine weight per expert (0 = not routed
  there; compressed, so about the size of the chosen entries).
"""
from __future__ import annotations

import io

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from moejax.data.pipeline import shift_right
from moejax.data.sources import get_source, held_out_documents
from moejax.layers import MOE_COLLECTION, TRACE_COLLECTION
from moejax.models import moe_outputs

DIRNAME = "routing_traces"
INPUTS = "inputs.npz"


def step_file(step: int) -> str:
    return f"step_{step:08d}.npz"


def _documents_batch(s, rows: int) -> dict[str, np.ndarray]:
    """`rows` held-out documents with their domains, one a row."""
    d = s.cfg.data
    docs = held_out_documents(d, rows)
    texts = [doc.text for doc in docs]
    tgt = s.vocab.encode_rows(texts, d.targets_length)
    names = sorted({doc.domain for doc in docs})
    return {"encoder_input_tokens": s.vocab.encode_rows(texts, d.inputs_length),
            "decoder_target_tokens": tgt, "decoder_input_tokens": shift_right(tgt),
            "domain": np.array([names.index(doc.domain) for doc in docs], np.int32),
            "domain_names": np.array(names)}


class RoutingTracer:
    """Writes the traces of one run (see the module docstring)."""

    MODEL_INPUTS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")

    def __init__(self, s, eval_batch):
        """s: the trainer's Setup; eval_batch: () -> the first evaluation
        batch (global arrays), read only for corpora without domains."""
        self.setup = s
        self.dir = epath.Path(s.workdir) / DIRNAME
        if get_source(s.cfg.data.source).held_out is not None:
            host = _documents_batch(s, s.cfg.batch_size)
            rows = s.cfg.batch_size // s.num_shards  # this process's rows of its shards
            local = {k: np.concatenate([host[k][i * rows:(i + 1) * rows] for i in s.shards])
                     for k in self.MODEL_INPUTS}
            self.batch = {k: jax.make_array_from_process_local_data(
                s.layout.batch_sharding, v) for k, v in local.items()}
        else:
            batch = eval_batch()
            self.batch = {k: batch[k] for k in self.MODEL_INPUTS}
            host = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                    for k, v in self.batch.items()}
        model = s.model

        def trace(variables, batch):
            _, state = model.apply(variables, **batch, enable_dropout=False,
                                   mutable=[MOE_COLLECTION, TRACE_COLLECTION])
            return moe_outputs(state.get(TRACE_COLLECTION), model.config)[1]
        self.trace = jax.jit(trace)
        if jax.process_index() == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write(INPUTS, host)

    def _write(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        (self.dir / name).write_bytes(buffer.getvalue())

    def __call__(self, step: int, variables) -> None:
        """Traces the batch under `variables` (model_variables(state))."""
        with self.setup.layout.context():
            layers = self.trace(variables, self.batch)
        arrays = {key.removesuffix("/weights"): np.asarray(
            multihost_utils.process_allgather(v, tiled=True), np.float16)
            for key, v in layers.items()}
        if jax.process_index() == 0:
            self._write(step_file(step), arrays)


def read_traces(workdir: str) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """(inputs, {step: {layer: weights [B, L, E] float32}}) of a run's traces."""
    root = epath.Path(workdir) / DIRNAME
    if not (root / INPUTS).exists():
        raise FileNotFoundError(f"no routing traces in {root} (train with "
                                "--config.trace_routing_every_steps=N)")
    load = lambda path: dict(np.load(io.BytesIO(path.read_bytes()), allow_pickle=False))
    steps = {}
    for path in sorted(root.glob("step_*.npz")):
        steps[int(path.name[len("step_"):-len(".npz")])] = {
            k: v.astype(np.float32) for k, v in load(path).items()}
    return load(root / INPUTS), steps
