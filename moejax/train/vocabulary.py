"""Which tokenizer a run uses: the configured one, the workdir's, the init
checkpoint's or one trained on the training data, and the one place that
decides."""
from __future__ import annotations

import os

import jax
from etils import epath
from jax.experimental import multihost_utils

from moejax.data import tokenizer as tok
from moejax.data.sources import make_source
from moejax.files import write_atomic
from moejax.train.config import TrainConfig
from moejax.train.init import tokenizer_of


def vocabulary(cfg: TrainConfig, workdir: str, num_shards: int) -> tok.Vocabulary:
    """tokenizer.path; else the workdir's cached model; else the init
    checkpoint's (copied into the cache, so resuming and --eval_only find
    it); else one trained on the training data and cached."""
    tcfg = cfg.tokenizer
    if tcfg.path:
        return tok.load(tcfg.path, tcfg.extra_ids)
    cache = os.path.join(workdir, "tokenizer", "spm.model")
    inherited = None
    if cfg.init_checkpoint and not epath.Path(cache).exists():
        inherited = tokenizer_of(cfg.init_checkpoint)
        if not inherited:  # a new tokenizer's ids would not match the checkpoint's embeddings
            raise ValueError(f"init_checkpoint {cfg.init_checkpoint!r} has no tokenizer (a run "
                             f"pretrained with tokenizer.path keeps none in its workdir); set "
                             f"tokenizer.path to the SentencePiece model it was trained with")
    if jax.process_index() == 0 and not epath.Path(cache).exists():
        if inherited:
            write_atomic(cache, epath.Path(inherited).read_bytes())
        else:
            source = make_source(cfg.data, "train", 0, num_shards)
            texts = (item if isinstance(item, str) else " ".join(item)  # task items are pairs
                     for _, (_, item) in zip(range(tcfg.train_documents), source.iterate(0, 0)))
            try:
                tok.train(texts, tcfg.vocab_size, tcfg.extra_ids, cache)
            except ValueError as e:
                raise ValueError(f"tokenizer (vocab_size={tcfg.vocab_size}, train_documents="
                                 f"{tcfg.train_documents}): {e}") from None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("moejax tokenizer")
    return tok.load(cache, tcfg.extra_ids)
