"""Document sources: each reads one shard of a text collection, in order.

  embedded  the generated topic corpus (moejax.data.corpus), offline.
  knowledge the generated knowledge-base corpus (moejax.data.knowledge),
            offline.
  markov    the generated word-chain corpus (moejax.data.markov), offline:
            every masked word is a lookup in a random transition table.
  text      local text files, one document per non-empty line.
  tfrecord  local TFRecord files of tf.train.Example with a text feature.
  tfds      any tensorflow-datasets text dataset (C4: 'c4/en').
  task      a fine-tuning task or mixture, as (input text, target text)
            pairs (moejax.tasks registers it when imported; the fine-tuning
            entry point and the trainer import it).
Every source registers itself (`register_source`) beside what it reads:
the generated corpora in their modules, the file and stream sources here.
`iterate(start)` yields (index, text) from the shard's `start`-th document,
so a pipeline resumes without re-reading what it consumed (streams skip).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from etils import epath

from moejax.data import seeded_rng
from moejax.files import is_local

# The generated corpora's held-out documents: the same generator, another seed.
EVAL_SEED_OFFSET = 1_000_003


class DatasetNotPrepared(FileNotFoundError):
    """A tfds dataset whose files are not in the data dir; the message says
    how to prepare it."""


def not_prepared(name: str, split: str, data_dir: str | None, reason: str) -> DatasetNotPrepared:
    where = data_dir or "the default data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return DatasetNotPrepared(
        f"tfds dataset {name!r} (split {split!r}) is not prepared in {where}: {reason} "
        f"Prepare it once with `tfds build {name.split(':')[0]} --data_dir=DIR` on a machine "
        "with network access (or put manually downloaded files in DIR/downloads/manual "
        "first), then set data.tfds_data_dir=DIR.")


def check_tfds_prepared(name: str, split: str, data_dir: str | None) -> None:
    """Raises DatasetNotPrepared unless `name` ('c4/en:3.1.0', 'glue/rte')
    has a prepared version under `data_dir`: its dataset_info.json, looked
    up without importing the dataset's builder code."""
    import tensorflow_datasets as tfds

    root = epath.Path(data_dir or tfds.core.constants.DATA_DIR)
    base, _, version = name.partition(":")
    pattern = f"{base}/{version}/dataset_info.json" if version else f"{base}/**/dataset_info.json"
    if not any(root.glob(pattern)):
        raise not_prepared(name, split, data_dir, f"there is no {pattern} under {root}.")


class Source(NamedTuple):
    make: Callable  # (DataConfig, split, shard, num_shards) -> a source with iterate()
    validate: Callable | None = None  # (DataConfig) -> None, raises ValueError naming the field
    check: Callable | None = None  # (DataConfig, split) -> None: its files or dataset exist
    held_out: Callable | None = None  # (DataConfig, count) -> held-out documents with domains


SOURCES: dict[str, Source] = {}


def register_source(name: str, make: Callable, validate: Callable | None = None,
                    check: Callable | None = None, held_out: Callable | None = None) -> None:
    """Makes DataConfig(source=name) build its source with make(cfg, split,
    shard, num_shards); validate(cfg) checks the fields only it reads,
    check(cfg, split) that its data exists before training starts, and
    held_out(cfg, count) gives a corpus with domains's first `count`
    held-out documents as objects (.text, .domain, .cloze())."""
    if name in SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    SOURCES[name] = Source(make, validate, check, held_out)


def source_names() -> tuple[str, ...]:
    return tuple(SOURCES)


def get_source(name: str) -> Source:
    if name not in SOURCES:
        hint = " (registered by moejax.tasks: import it first)" if name == "task" else ""
        raise ValueError(f"source must be one of {source_names()}, got {name!r}{hint}")
    return SOURCES[name]


def validate_source(cfg) -> None:
    """Raises ValueError for an unknown cfg.source or fields its source rejects."""
    source = get_source(cfg.source)
    if source.validate:
        source.validate(cfg)


def held_out_documents(cfg, count: int):
    """The first `count` held-out documents of DataConfig `cfg`'s corpus, as
    objects with .text, .domain and .cloze() (before, answer, after)
    triples: what routing-by-domain probes read. Only the generated
    corpora with domains ('knowledge', 'markov') have them."""
    source = get_source(cfg.source)
    if source.held_out is None:
        with_domains = sorted(n for n, s in SOURCES.items() if s.held_out)
        raise ValueError(f"held-out documents with domains need data.source in {with_domains}, "
                         f"got {cfg.source!r}")
    return source.held_out(cfg, count)


def generated(texts: Callable[..., Sequence[str]]) -> Callable:
    """make() of a generated corpus: texts(cfg, doc_seed, count) of one corpus
    (fixed by cfg.seed); the train split draws documents with cfg.seed, the
    held-out split with cfg.seed + EVAL_SEED_OFFSET."""
    def make(cfg, split: str, shard: int, num_shards: int) -> InMemory:
        if split == "train":
            seed, count, field = cfg.seed, cfg.embedded_documents, "embedded_documents"
        else:
            seed, count = cfg.seed + EVAL_SEED_OFFSET, cfg.embedded_eval_documents
            field = "embedded_eval_documents"
        return InMemory(texts(cfg, seed, count), shard, num_shards, cfg.seed,
                        f"data.source={cfg.source!r} ({split} split, data.{field}={count})")
    return make


def validate_generated(cfg) -> None:
    for name in ("embedded_documents", "embedded_eval_documents"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


class InMemory:
    """A list of documents; shard s of n takes every n-th, starting at s.
    Each epoch visits the shard in a fresh permutation of (seed, epoch)."""

    def __init__(self, texts: Sequence[str], shard: int, num_shards: int, seed: int,
                 what: str = "the source"):
        self.texts = texts[shard::num_shards]
        if not self.texts:
            share = f"input shard {shard} of {num_shards} of " if num_shards > 1 else ""
            raise ValueError(f"{share}{what} has no documents")
        self.seed = seed

    def iterate(self, start: int, epoch: int) -> Iterator[tuple[int, str]]:
        order = seeded_rng(self.seed, epoch).permutation(len(self.texts))
        for i in range(start, len(self.texts)):
            yield i, self.texts[order[i]]


class TfStream:
    """A tf.data dataset of documents, read in order (no shuffling, so the
    position is exact); `start` skips consumed documents."""

    def __init__(self, make_dataset, text_key: str | None):
        self.make_dataset = make_dataset
        self.text_key = text_key

    def iterate(self, start: int, epoch: int) -> Iterator[tuple[int, str]]:
        del epoch  # streams are read in their stored order every epoch
        for i, item in enumerate(self.make_dataset().skip(start).as_numpy_iterator(), start):
            text = item[self.text_key] if self.text_key else item
            yield i, text.decode("utf-8")


def _glob(pattern: str) -> list[str]:
    """Local glob, or (a URI) the matches of its last component's wildcards."""
    if is_local(pattern):
        return glob.glob(pattern)
    path = epath.Path(pattern)
    return [os.fspath(f) for f in path.parent.glob(path.name)]


def _files(patterns: str, what: str) -> list[str]:
    files = sorted(f for p in patterns.split(",") if p for f in _glob(p))
    if not files:
        raise FileNotFoundError(f"{what} {patterns!r} matches no files")
    folders = [f for f in files if epath.Path(f).is_dir()]
    if folders:
        raise IsADirectoryError(f"{what} {patterns!r} names the directory {folders[0]!r}; give "
                                f"files or a glob such as {os.path.join(folders[0], '*.txt')!r}")
    return files


def _lines(file: str, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    try:
        text = epath.Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {file!r} is not UTF-8 text ({e.reason} at byte {e.start})"
                         ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _split_patterns(cfg, split: str) -> str:
    return cfg.train_files if split == "train" else cfg.eval_files


def _split_files(cfg, split: str) -> list[str]:
    return _files(_split_patterns(cfg, split), f"data.{split}_files")


def check_paths(cfg, splits=("train", "eval")) -> None:
    """Fails early when a source's files, a tfds dataset or a task's tfds
    data are missing (FileNotFoundError, DatasetNotPrepared)."""
    check = get_source(cfg.source).check
    for split in splits if check else ():
        check(cfg, split)


def make_source(cfg, split: str, shard: int, num_shards: int):
    """The source for `split` ('train' or 'eval') of DataConfig `cfg`."""
    return get_source(cfg.source).make(cfg, split, shard, num_shards)


def _text(cfg, split: str, shard: int, num_shards: int) -> InMemory:
    what = f"data.{split}_files"
    texts = [line for f in _split_files(cfg, split) for line in _lines(f, what)]
    return InMemory(texts, shard, num_shards, cfg.seed, f"{what} {_split_patterns(cfg, split)!r}")


def _tensorflow():
    import tensorflow as tf  # only the streaming sources need TensorFlow

    tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators JAX owns
    return tf


def _tfrecord(cfg, split: str, shard: int, num_shards: int) -> TfStream:
    tf = _tensorflow()
    files = _split_files(cfg, split)
    spec = {cfg.text_key: tf.io.FixedLenFeature([], tf.string)}
    return TfStream(lambda: tf.data.TFRecordDataset(files).shard(num_shards, shard).map(
        lambda r: tf.io.parse_single_example(r, spec)), cfg.text_key)


def _tfds_split(cfg, split: str) -> str:
    return cfg.train_split if split == "train" else cfg.eval_split


def _tfds(cfg, split: str, shard: int, num_shards: int) -> TfStream:
    _tensorflow()
    import tensorflow_datasets as tfds

    sub_split = tfds.even_splits(_tfds_split(cfg, split), n=num_shards)[shard]
    return TfStream(lambda: tfds.load(
        cfg.tfds_name, split=sub_split, data_dir=cfg.tfds_data_dir or None,
        shuffle_files=False,
        read_config=tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)),
        cfg.text_key)


def _validate_tfds(cfg) -> None:
    if not cfg.tfds_name:
        raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'c4/en:3.1.0')")


register_source("text", _text, check=_split_files)
register_source("tfrecord", _tfrecord, check=_split_files)
register_source("tfds", _tfds, validate=_validate_tfds, check=lambda cfg, split: (
    check_tfds_prepared(cfg.tfds_name, _tfds_split(cfg, split), cfg.tfds_data_dir)))
