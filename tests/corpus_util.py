"""Shared check of the generated corpora's sources (knowledge, markov)."""
from moejax.data.sources import make_source
from moejax.train.config import DataConfig


def held_out_split(source: str, **fields) -> list[str]:
    """The held-out documents of a generated `source` (seed 2, 50 training
    and 20 held-out documents) after checking that none of them is a
    training document."""
    cfg = DataConfig(source=source, embedded_documents=50, embedded_eval_documents=20, seed=2,
                     **fields)
    train = [t for _, t in make_source(cfg, "train", 0, 1).iterate(0, 0)]
    held_out = [t for _, t in make_source(cfg, "eval", 0, 1).iterate(0, 0)]
    assert len(train) == 50 and len(held_out) == 20 and not set(train) & set(held_out)
    return held_out
