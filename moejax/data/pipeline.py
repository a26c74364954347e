"""Input pipeline: documents -> tokens -> objective examples -> packed batches.

Deterministic and resumable: the stream position (epoch, document, chunk)
after each batch comes with the batch, the trainer checkpoints it, and a
pipeline built from a saved position yields exactly the batches that would
have followed. Randomness (span noise, prefix split points, epoch order) is
seeded by (seed, epoch, document), never by how far the process got.

A host reads its own input shards and builds its rows of the global batch;
`num_shards` fixed independently of the process count gives the same global
batch on one host or many.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np

from moejax.data import seeded_rng
from moejax.data.objectives import Objective
from moejax.data.sources import make_source
from moejax.data.tokenizer import Vocabulary

FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
            "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
            "decoder_positions")


def shift_right(targets: np.ndarray) -> np.ndarray:
    """Teacher-forced decoder inputs of `targets` [..., L]: 0 (the start
    token), then the targets but the last."""
    return np.concatenate([np.zeros_like(targets[..., :1]), targets[..., :-1]], -1)


@dataclasses.dataclass(frozen=True)
class Position:
    epoch: int = 0
    document: int = 0
    chunk: int = 0


def examples(source, vocab: Vocabulary, objective: Objective, seed: int,
             start: Position, repeat: bool, what: str = "the data source"
             ) -> Iterator[tuple[Position, np.ndarray, np.ndarray]]:
    """(position, inputs, targets) from `start`; loops over epochs if `repeat`.
    A whole epoch of documents that gives no example (every one too short
    for the objective) is a ValueError naming `what`: looping over epochs
    would never produce a batch."""
    epoch, first_doc, first_chunk = start.epoch, start.document, start.chunk
    while True:
        empty, whole_epoch, yielded = True, first_doc == 0 and first_chunk == 0, False
        for doc, item in source.iterate(first_doc, epoch):
            empty = False
            rng = seeded_rng(seed, epoch, doc)
            for chunk, (inputs, targets) in enumerate(objective.from_item(item, vocab, rng)):
                if doc == first_doc and chunk < first_chunk:
                    continue
                yielded = True
                yield Position(epoch, doc, chunk), inputs, targets
            first_chunk = 0
        if not repeat or (empty and first_doc == 0):
            return
        if whole_epoch and not yielded:
            raise ValueError(f"{what} gave no {objective.name} example in a whole epoch: every "
                             f"document is shorter than the {objective.min_tokens} tokens it "
                             f"needs after tokenization")
        epoch, first_doc = epoch + 1, 0


class Packer:
    """Fills `rows` rows of fixed lengths with whole examples, left to right.

    With `pack`, an example joins the last row when both its inputs and
    targets fit there, else opens the next row; without it, each example
    gets its own row. Segment ids (1, 2, ... per row) and positions (from 0
    per segment) mark the examples; 0 is padding.
    """

    def __init__(self, rows: int, inputs_length: int, targets_length: int, pack: bool):
        self.rows, self.pack = rows, pack
        self.lengths = {"encoder": inputs_length, "decoder": targets_length}
        self.batch = {k: np.zeros((rows, self.lengths[k.split("_")[0]]), np.int32)
                      for k in FEATURES}
        self.fill = np.zeros((rows, 2), np.int64)
        self.segments = np.zeros((rows,), np.int64)
        self.row = -1

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> bool:
        """Places one example (truncated to the lengths); False when the batch is full."""
        inputs = inputs[:self.lengths["encoder"]]
        targets = targets[:self.lengths["decoder"]]
        fits = (self.row >= 0 and self.pack
                and self.fill[self.row, 0] + len(inputs) <= self.lengths["encoder"]
                and self.fill[self.row, 1] + len(targets) <= self.lengths["decoder"])
        if not fits:
            if self.row + 1 == self.rows:
                return False
            self.row += 1
        r = self.row
        self.segments[r] += 1
        for side, tokens, col in (("encoder", inputs, 0), ("decoder", targets, 1)):
            s = slice(self.fill[r, col], self.fill[r, col] + len(tokens))
            self.batch[f"{side}_segment_ids"][r, s] = self.segments[r]
            self.batch[f"{side}_positions"][r, s] = np.arange(len(tokens))
            if side == "encoder":
                self.batch["encoder_input_tokens"][r, s] = tokens
            else:
                self.batch["decoder_target_tokens"][r, s] = tokens
                self.batch["decoder_input_tokens"][r, s] = shift_right(tokens)
            self.fill[r, col] += len(tokens)
        return True


def batches(stream: Iterator, rows: int, inputs_length: int, targets_length: int,
            pack: bool) -> Iterator[tuple[dict[str, np.ndarray], Position | None]]:
    """(batch, position of the first example not in it); the last, partial
    batch of a finite stream comes with position None."""
    pending = None
    while True:
        packer = Packer(rows, inputs_length, targets_length, pack)
        if pending is not None:
            packer.add(*pending[1:])
            pending = None
        for item in stream:
            if not packer.add(*item[1:]):
                pending = item
                break
        if pending is None:
            if packer.row >= 0:
                yield packer.batch, None
            return
        yield packer.batch, pending[0]


class Pipeline:
    """This host's rows of each global batch, from its input shards.

    state() is a JSON-able list of per-shard positions after the last batch
    returned; Pipeline(..., state=that) continues from there.
    """

    def __init__(self, data_cfg, vocab: Vocabulary, objective: Objective, split: str,
                 rows_per_shard: int, shards: list[int], num_shards: int,
                 state: list[dict] | None = None):
        repeat = split == "train"
        positions = [Position(**s) for s in state] if state else [Position()] * len(shards)
        self.iterators = [
            batches(examples(make_source(data_cfg, split, shard, num_shards), vocab, objective,
                             data_cfg.seed + 7919 * shard, pos, repeat,
                             f"data.source={data_cfg.source!r} ({split} split)"),
                    rows_per_shard, objective.inputs_length, objective.targets_length,
                    data_cfg.pack)
            for shard, pos in zip(shards, positions)]
        self.positions = positions

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = []
        for i, it in enumerate(self.iterators):
            batch, position = next(it)
            parts.append(batch)
            self.positions[i] = position
        return {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}

    def state(self) -> list[dict]:
        return [dataclasses.asdict(p) for p in self.positions]


class Prefetch:
    """Builds the next batches (and their pipeline positions) in a thread
    while the device runs the current step."""

    def __init__(self, pipeline: Pipeline, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.pipeline = pipeline
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for batch in self.pipeline:
                self.queue.put((batch, self.pipeline.state()))
        except Exception as e:  # surfaced in the training thread
            self.queue.put(e)

    def next(self):
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item
