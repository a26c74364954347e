"""The Markov corpus: each domain a random second-order word chain.

Why a second testbed corpus: on the knowledge corpus (moejax.data.knowledge)
most masked tokens are copied names and template words, a fact is a
training target only when its one answer word is masked, and a tiny model
learns facts in a seed-dependent phase (experiments/testbed/README.md).
Here every masked word is knowledge, learned gradually:

(a) capacity: each of the 8 domains has `words` words, and the word after
    each pair (a, b) of consecutive words is one of SUCCESSORS words of the
    domain, drawn once per seed, with probabilities SUCCESSOR_PROBS: a table
    of 8 * words**2 contexts. A context is a conjunction of two tokens, so no
    token's embedding can hold its row (a first-order chain's table fits in
    the embeddings, and there a dense tiny T5 tied the MoE), and the table is
    random, so no rule shorter than it predicts a word: whatever holds more
    of it, more FFN parameters, predicts better.
(b) structure: each domain spells its words with its own consonants and
    vowels (knowledge.DOMAINS), so the domain, and with it which expert
    could hold a context's row, is visible in the tokens.

A document is one domain's walk of 24-40 words from two uniformly drawn
words. The chains depend only on `chain_seed`; documents on (doc_seed,
index), so held-out documents (another doc_seed) walk the same chains. A
model that knows the table pays the entropy of SUCCESSOR_PROBS, 0.56 nats
per word; one that knows only the domain, log(words).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from moejax.data import seeded_rng
from moejax.data.knowledge import DOMAINS, MAX_ENTITIES, domain_words
from moejax.data.sources import EVAL_SEED_OFFSET, generated, register_source, validate_generated

SUCCESSORS = 2
SUCCESSOR_PROBS = np.array([0.75, 0.25])
DOC_WORDS = (24, 40)  # inclusive range of a document's length in words
# Words are drawn like the knowledge corpus's entity names (3 syllables of
# their domain's letters, knowledge.domain_words): the same name space, so
# the same bound.
MAX_WORDS = MAX_ENTITIES


@functools.lru_cache(maxsize=4)
def chains(chain_seed: int, words: int) -> tuple[tuple[tuple[str, ...], ...], np.ndarray]:
    """(vocab, successors): vocab[d][i] is word i of domain d; successors
    int [D, words, words, SUCCESSORS]: the words that may follow the pair
    (i, j), in the order of SUCCESSOR_PROBS (distinct)."""
    if not SUCCESSORS <= words <= MAX_WORDS:
        raise ValueError(f"markov words per domain must be in [{SUCCESSORS}, {MAX_WORDS}], "
                         f"got {words}")
    rng = seeded_rng(chain_seed, 4271)
    taken: set = set()
    vocab = tuple(domain_words(rng, *DOMAINS[name], words, 3, taken) for name in DOMAINS)
    # Shape: [D, words, words]. A uniform first successor and a second one
    # shifted by 1..words-1: a uniform pair of distinct words.
    first = rng.randint(words, size=(len(DOMAINS), words, words))
    second = (first + rng.randint(1, words, size=first.shape)) % words
    return vocab, np.stack([first, second], -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Walk:
    domain: str
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def cloze(self) -> list[tuple[str, str, str]]:
        """(before, answer, after) for each word after the first two: the
        text split around the word, whose distribution the table gives from
        the two words before it (the one after narrows it further)."""
        w = self.words
        return [(" ".join(w[:t]), w[t], " ".join(w[t + 1:])) for t in range(2, len(w))]


def walks(chain_seed: int, words: int, doc_seed: int, count: int) -> list[Walk]:
    """The first `count` documents of stream `doc_seed`."""
    vocab, successors = chains(chain_seed, words)
    rng = seeded_rng(doc_seed, 8111)
    lo, hi = DOC_WORDS
    domain = rng.randint(len(DOMAINS), size=count)
    length = rng.randint(lo, hi + 1, size=count)
    picks = rng.choice(SUCCESSORS, size=(count, hi), p=SUCCESSOR_PROBS)
    # Shape: [count, hi]: all walks advance together, one word per column.
    path = np.empty((count, hi), np.int64)
    path[:, :2] = rng.randint(words, size=(count, 2))
    for t in range(2, hi):
        path[:, t] = successors[domain, path[:, t - 2], path[:, t - 1], picks[:, t]]
    names = tuple(DOMAINS)
    return [Walk(names[d], tuple(vocab[d][i] for i in path[j, :n]))
            for j, (d, n) in enumerate(zip(domain, length))]


@functools.lru_cache(maxsize=4)
def documents(chain_seed: int, words: int, doc_seed: int, count: int) -> tuple[str, ...]:
    """The texts of the first `count` documents, generated once per process."""
    return tuple(w.text for w in walks(chain_seed, words, doc_seed, count))


def _validate(cfg) -> None:
    validate_generated(cfg)
    if not SUCCESSORS <= cfg.markov_words <= MAX_WORDS:
        raise ValueError(f"markov_words must be in [{SUCCESSORS}, {MAX_WORDS}] (words are 3 "
                         f"syllables of a domain's letters), got {cfg.markov_words}")


# One set of chains (cfg.seed); held-out documents walk the same chains.
register_source(
    "markov", generated(lambda cfg, seed, count: documents(
        cfg.seed, cfg.markov_words, seed, count)), _validate,
    held_out=lambda cfg, count: walks(cfg.seed, cfg.markov_words, cfg.seed + EVAL_SEED_OFFSET,
                                      count))
