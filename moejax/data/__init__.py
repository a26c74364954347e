"""Input data: sources, tokenizer, pretraining objectives, packing, pipeline."""
from __future__ import annotations

import numpy as np


def seeded_rng(*keys: int) -> np.random.RandomState:
    """A generator that depends only on `keys` (e.g. seed, epoch, document),
    so every stream built from them is reproducible from any position."""
    return np.random.RandomState(np.random.SeedSequence(list(keys)).generate_state(1)[0])
