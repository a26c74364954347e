"""SentencePiece vocabulary with T5's conventions.

Ids: 0 = padding (also the decoder start token), 1 = EOS, 2 = unknown; the
SentencePiece pieces follow, and `extra_ids` sentinels sit at the top of the
vocabulary with <extra_id_0> highest, as in T5's vocabulary. A path to an
existing model (T5's `spiece.model` for real users) is loaded as is; without
one, a unigram model is trained on the training corpus and cached.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from moejax.files import write_atomic

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class Vocabulary:
    def __init__(self, model_proto: bytes, extra_ids: int):
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        if (self.processor.pad_id(), self.processor.eos_id()) != (PAD_ID, EOS_ID):
            raise ValueError(f"SentencePiece model must use pad_id={PAD_ID} and eos_id={EOS_ID} as "
                             f"T5's does; got pad_id={self.processor.pad_id()}, "
                             f"eos_id={self.processor.eos_id()}")
        self.extra_ids = extra_ids

    @property
    def size(self) -> int:
        """Pieces plus sentinels: the smallest model vocab_size that fits."""
        return self.processor.get_piece_size() + self.extra_ids

    def sentinel(self, i: int) -> int:
        """Id of <extra_id_i>."""
        if not 0 <= i < self.extra_ids:
            raise ValueError(f"sentinel index must be in [0, {self.extra_ids}), got {i}")
        return self.size - 1 - i

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.processor.encode(text), np.int32)

    def encode_with_eos(self, text: str, length: int) -> np.ndarray:
        """int32 [<= length]: the text's tokens, truncated before EOS so a
        long text still ends in EOS (fine-tuning inputs and targets)."""
        return np.append(self.encode(text)[:length - 1], EOS_ID).astype(np.int32)

    def encode_rows(self, texts: Sequence[str], length: int) -> np.ndarray:
        """int32 [len(texts), length]: each text's first `length` tokens, one
        row each, 0 (padding) after (no EOS: documents read as they are)."""
        rows = np.zeros((len(texts), length), np.int32)
        for r, text in enumerate(texts):
            ids = self.encode(text)[:length]
            rows[r, :len(ids)] = ids
        return rows

    def decode(self, ids: Iterable[int]) -> str:
        pieces = self.processor.get_piece_size()
        ids = [int(i) for i in ids]
        if EOS_ID in ids:
            ids = ids[:ids.index(EOS_ID)]
        out, chunk = [], []
        for i in ids:
            if i >= pieces:
                out.append(self.processor.decode(chunk))
                out.append(f"<extra_id_{self.size - 1 - i}>")
                chunk = []
            elif i != PAD_ID:
                chunk.append(i)
        out.append(self.processor.decode(chunk))
        return " ".join(s for s in out if s)


def load(path: str, extra_ids: int) -> Vocabulary:
    """Loads a SentencePiece model from any filesystem (moejax.files)."""
    file = epath.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"tokenizer.path {path!r} does not exist; give an existing "
                                f"SentencePiece model or leave it empty to train one")
    proto = file.read_bytes()
    try:
        return Vocabulary(proto, extra_ids)
    except RuntimeError as e:  # sentencepiece's parse failure
        raise ValueError(f"tokenizer {path!r} is not a SentencePiece model ({e})") from None


def train(texts: Iterable[str], vocab_size: int, extra_ids: int, cache_path: str) -> Vocabulary:
    """Trains a unigram SentencePiece model with T5's special ids on `texts`,
    or loads it from `cache_path` when an earlier run trained it."""
    if epath.Path(cache_path).exists():
        return load(cache_path, extra_ids)
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size,
            model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
            character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    except RuntimeError as e:  # SentencePiece's C++ checks: keep their reason, not their source
        reason = str(e).splitlines()[0]
        reason = reason.split("] ", 1)[1] if "] " in reason else reason
        needed = re.search(r"required_chars\. \d+ vs (\d+)", reason)
        if needed:  # its advice names its own flags; say what to set here
            reason = (f"the training text needs at least {needed.group(1)} pieces (its characters "
                      f"and the special pieces)")
        elif "sentences_.empty()" in str(e) or not reason.strip():
            reason = "no training text (every document was empty)"
        raise ValueError(f"SentencePiece cannot train a {vocab_size}-piece model: {reason}"
                         ) from None
    write_atomic(cache_path, proto.getvalue())  # a killed run never leaves half a model
    return Vocabulary(proto.getvalue(), extra_ids)
