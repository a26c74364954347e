"""Pretraining objectives: token ids of one document -> (inputs, targets) examples.

span_corruption  T5's: drop ~noise_density of the tokens in spans of mean
                 length mean_noise_span_length; inputs keep the rest with a
                 sentinel per dropped span, targets list each sentinel and
                 the span it replaced.
prefix_lm        split a chunk at a random point: inputs the prefix,
                 targets the rest.
lm               plain language modelling: targets the chunk, inputs just EOS
                 (so cross-attention has a key inside the packed segment).
text_to_text     fine-tuning: the source gives (input text, target text);
                 each side is tokenized and truncated to its length.
Every example ends in EOS on both sides. All
randomness comes from the `rng` the caller seeds per example, so the stream
is reproducible from any position.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import numpy as np

from moejax.data.tokenizer import EOS_ID

OBJECTIVES = ("span_corruption", "prefix_lm", "lm", "text_to_text")


def _span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    return num_noise, num_spans


@functools.cache
def span_corruption_lengths(inputs_length: int, noise_density: float,
                            mean_span: float) -> tuple[int, int]:
    """(raw tokens per example, targets length): the longest raw chunk whose
    corrupted inputs (kept tokens + one sentinel per span + EOS) fit in
    `inputs_length`, and the targets length that chunk needs."""
    best = None
    for length in range(2, 4 * inputs_length):
        num_noise, num_spans = _span_counts(length, noise_density, mean_span)
        if length - num_noise + num_spans + 1 > inputs_length:
            break
        best = (length, num_noise + num_spans + 1)
    if best is None:
        raise ValueError(f"inputs_length={inputs_length} is too short for span corruption")
    return best


def _random_segmentation(rng: np.random.RandomState, items: int, segments: int) -> np.ndarray:
    """`items` split into `segments` positive lengths, uniformly at random."""
    cuts = (np.sort(rng.choice(np.arange(1, items), segments - 1, replace=False))
            if segments > 1 else [])
    return np.diff(np.concatenate([[0], cuts, [items]])).astype(np.int64)


def noise_mask(length: int, noise_density: float, mean_span: float,
               rng: np.random.RandomState) -> np.ndarray:
    """bool [length]: True for corrupted tokens. Noise and non-noise spans
    alternate, starting with non-noise, as in T5's random_spans_noise_mask."""
    num_noise, num_spans = _span_counts(length, noise_density, mean_span)
    num_spans = min(num_spans, num_noise, length - num_noise)
    noise = _random_segmentation(rng, num_noise, num_spans)
    keep = _random_segmentation(rng, length - num_noise, num_spans)
    spans = np.stack([keep, noise], 1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), spans)


def span_corrupt(tokens: np.ndarray, mask: np.ndarray, sentinel: Callable[[int], int]):
    """(inputs, targets) for `tokens` with corrupted positions `mask`."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinels = np.array([sentinel(i) for i in range(int(starts.sum()))], np.int32)
    with_sentinels = tokens.copy()
    with_sentinels[starts] = sentinels
    inputs = with_sentinels[~mask | starts]
    targets = np.insert(tokens[mask], np.flatnonzero(starts[mask]), sentinels)
    eos = np.array([EOS_ID], np.int32)
    return (np.concatenate([inputs, eos]).astype(np.int32),
            np.concatenate([targets, eos]).astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    inputs_length: int
    targets_length: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"data.objective must be one of {OBJECTIVES}, got {self.name!r}")

    @property
    def chunk_length(self) -> int:
        """Raw tokens one example consumes."""
        if self.name == "span_corruption":
            return span_corruption_lengths(self.inputs_length, self.noise_density,
                                           self.mean_noise_span_length)[0]
        if self.name == "prefix_lm":
            return self.inputs_length + self.targets_length - 2
        return self.targets_length - 1

    @property
    def min_tokens(self) -> int:
        """Tokens a document needs to give an example."""
        return 2 if self.name in ("span_corruption", "prefix_lm") else 1

    def check_lengths(self):
        if self.name == "span_corruption":
            need = span_corruption_lengths(self.inputs_length, self.noise_density,
                                           self.mean_noise_span_length)[1]
            if need > self.targets_length:
                raise ValueError(f"span corruption with inputs_length={self.inputs_length} needs "
                                 f"targets_length >= {need}, got {self.targets_length}")

    def from_item(self, item, vocab, rng: np.random.RandomState
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, targets) examples of one source item: a document's text,
        or an (input text, target text) pair for 'text_to_text'."""
        if self.name != "text_to_text":
            yield from self.examples(vocab.encode(item), rng, vocab.sentinel)
            return
        yield tuple(vocab.encode_with_eos(text, length)
                    for text, length in zip(item, (self.inputs_length, self.targets_length)))

    def examples(self, tokens: np.ndarray, rng: np.random.RandomState,
                 sentinel: Callable[[int], int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, targets) for each chunk of one document's tokens."""
        n = self.chunk_length
        for start in range(0, len(tokens), n):
            chunk = tokens[start:start + n]
            if self.name == "span_corruption":
                if len(chunk) < self.min_tokens:
                    continue
                mask = noise_mask(len(chunk), self.noise_density, self.mean_noise_span_length, rng)
                yield span_corrupt(chunk, mask, sentinel)
            elif self.name == "prefix_lm":
                if len(chunk) < self.min_tokens:
                    continue
                # Both sides (plus EOS) must fit their lengths.
                low = max(1, len(chunk) - (self.targets_length - 1))
                split = rng.randint(low, min(len(chunk) - 1, self.inputs_length - 1) + 1)
                yield (np.append(chunk[:split], EOS_ID).astype(np.int32),
                       np.append(chunk[split:], EOS_ID).astype(np.int32))
            else:
                yield np.array([EOS_ID], np.int32), np.append(chunk, EOS_ID).astype(np.int32)
