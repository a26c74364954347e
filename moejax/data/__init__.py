"""Input data: sources, tokenizer, pretraining objectives, packing, pipeline."""
from __future__ import annotations

import numpy as np


def seeded_rng(*keys: int) -> np.random.RandomState:
    """A generator that depends only on `keys` (e.g. seed, epoch, document),
    so every stream built from them is reproducible from any position."""
    return np.random.RandomState(np.random.SeedSequence(list(keys)).generate_state(1)[0])


# The generated corpora register their sources (moejax.data.sources) when
# imported; importing them here makes every built-in source known wherever
# moejax.data is.
from moejax.data import corpus, knowledge, markov  # noqa: E402, F401
