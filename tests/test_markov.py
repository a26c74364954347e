"""The Markov corpus: documents are walks of one fixed random second-order
chain per domain, read back from the text and checked against the chain."""
import collections

import numpy as np
import pytest
from corpus_util import held_out_split

from moejax.data import markov
from moejax.data.knowledge import DOMAINS
from moejax.train.config import DataConfig

WORDS = 6


def test_documents_walk_the_chain_with_its_probabilities():
    vocab, successors = markov.chains(4, WORDS)
    where = {w: (d, i) for d, words in enumerate(vocab) for i, w in enumerate(words)}
    assert len(where) == 8 * WORDS  # no word belongs to two domains
    rank = collections.Counter()
    lengths, contexts = [], set()
    for text in markov.documents(4, WORDS, 9, 2000):
        seq = [where[w] for w in text.split()]
        lengths.append(len(seq))
        assert len({d for d, _ in seq}) == 1  # one domain per document
        for (d, a), (_, b), (_, c) in zip(seq, seq[1:], seq[2:]):
            # The word after (a, b) must be one of that pair's successors; count which.
            rank[list(successors[d, a, b]).index(c)] += 1
            contexts.add((d, a, b))
    assert min(lengths) == markov.DOC_WORDS[0] and max(lengths) == markov.DOC_WORDS[1]
    assert len(contexts) == 8 * WORDS ** 2  # every pair of a domain is visited
    total = sum(rank.values())
    freq = np.array([rank[j] / total for j in range(markov.SUCCESSORS)])
    # ~60,000 transitions: each frequency within 0.01 of its probability (> 5 SE).
    np.testing.assert_allclose(freq, markov.SUCCESSOR_PROBS, atol=0.01)


def test_successors_are_distinct_uniform_words_of_the_domain():
    vocab, successors = markov.chains(0, WORDS)
    assert successors.shape == (8, WORDS, WORDS, markov.SUCCESSORS)
    assert (successors[..., 0] != successors[..., 1]).all()
    assert successors.min() >= 0 and successors.max() < WORDS
    # The 288 contexts' successors cover every word about equally often.
    counts = np.bincount(successors.reshape(-1), minlength=WORDS)
    assert counts.min() > 0.6 * counts.mean()
    for d, name in enumerate(DOMAINS):
        assert set("".join(vocab[d])) <= set("".join(DOMAINS[name]))
    # Another seed draws another table; the same seed the same one.
    assert not np.array_equal(markov.chains(1, WORDS)[1], successors)
    assert markov.documents(0, WORDS, 3, 5) == markov.documents(0, WORDS, 3, 5)


def test_cloze_masks_each_word_after_the_first_two():
    walk = markov.walks(0, WORDS, 0, 1)[0]
    triples = walk.cloze()
    assert len(triples) == len(walk.words) - 2
    for t, (before, answer, after) in enumerate(triples, 2):
        assert answer == walk.words[t]
        assert " ".join(s for s in (before, answer, after) if s) == walk.text
        assert len(before.split()) == t


def test_markov_source_holds_out_documents_not_chains():
    held_out = held_out_split("markov", markov_words=WORDS)
    vocab, _ = markov.chains(2, WORDS)
    words = {w for d in vocab for w in d}
    assert all(set(t.split()) <= words for t in held_out)
    for bad in (1, markov.MAX_WORDS + 1):
        with pytest.raises(ValueError, match=rf"markov_words must be in \[2, 900\].*got {bad}"):
            DataConfig(source="markov", markov_words=bad)
