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
            pairs: registered by the tasks package (`register_source`), so this
            layer does not depend on the one above it.
`iterate(start)` yields (index, text) from the shard's `start`-th document,
so a pipeline resumes without re-reading what it consumed (streams skip).
"""
from __future__ import annotations

import glob
import os
from typing import Callable, Iterator, NamedTuple, Sequence

from etils import epath

from moejax.data import corpus, knowledge, markov, seeded_rng
from moejax.files import is_local

BUILTIN_SOURCES = ("embedded", "knowledge", "markov", "tfds", "text", "tfrecord")
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


class RegisteredSource(NamedTuple):
    make: Callable  # (DataConfig, split, shard, num_shards) -> a source with iterate()
    validate: Callable | None  # (DataConfig) -> None, raises ValueError naming the field


_REGISTERED: dict[str, RegisteredSource] = {}


def register_source(name: str, make: Callable, validate: Callable | None = None) -> None:
    """Makes DataConfig(source=name) build its source with make(cfg, split,
    shard, num_shards); validate(cfg) checks the fields only it reads."""
    if name in BUILTIN_SOURCES or name in _REGISTERED:
        raise ValueError(f"data source {name!r} is already registered")
    _REGISTERED[name] = RegisteredSource(make, validate)


def source_names() -> tuple[str, ...]:
    return BUILTIN_SOURCES + tuple(_REGISTERED)


def validate_source(cfg) -> None:
    """Raises ValueError for an unknown cfg.source or fields its source rejects."""
    if cfg.source not in source_names():
        raise ValueError(f"source must be one of {source_names()}, got {cfg.source!r}")
    registered = _REGISTERED.get(cfg.source)
    if registered and registered.validate:
        registered.validate(cfg)


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
    """Fails early when a local source's files, a tfds dataset or a task's
    tfds data are missing (FileNotFoundError, DatasetNotPrepared)."""
    for split in splits:
        if cfg.source in ("text", "tfrecord"):
            _split_files(cfg, split)
        elif cfg.source == "tfds":
            if not cfg.tfds_name:
                raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'c4/en:3.1.0')")
            check_tfds_prepared(cfg.tfds_name, cfg.train_split if split == "train"
                                else cfg.eval_split, cfg.tfds_data_dir)
        elif cfg.source == "task":
            make_source(cfg, split, 0, 1)  # reads (and caches) the task's examples


def make_source(cfg, split: str, shard: int, num_shards: int):
    """The source for `split` ('train' or 'eval') of DataConfig `cfg`."""
    if cfg.source in ("embedded", "knowledge", "markov"):
        if split == "train":
            seed, count = cfg.seed, cfg.embedded_documents
        else:  # held out: another seed of the same generator
            seed, count = cfg.seed + EVAL_SEED_OFFSET, cfg.embedded_eval_documents
        if cfg.source == "embedded":
            texts = corpus.documents(seed, count)
        elif cfg.source == "knowledge":  # one knowledge base (cfg.seed); held out restates it
            texts = knowledge.documents(cfg.seed, cfg.knowledge_entities, seed, count)
        else:  # one set of chains (cfg.seed); held-out documents walk the same chains
            texts = markov.documents(cfg.seed, cfg.markov_words, seed, count)
        count_field = "embedded_documents" if split == "train" else "embedded_eval_documents"
        return InMemory(texts, shard, num_shards, cfg.seed,
                        f"data.source={cfg.source!r} ({split} split, data.{count_field}={count})")
    if cfg.source == "text":
        what = f"data.{split}_files"
        texts = [line for f in _split_files(cfg, split) for line in _lines(f, what)]
        return InMemory(texts, shard, num_shards, cfg.seed,
                        f"{what} {_split_patterns(cfg, split)!r}")
    if cfg.source in _REGISTERED:
        return _REGISTERED[cfg.source].make(cfg, split, shard, num_shards)
    import tensorflow as tf  # only the streaming sources need TensorFlow

    tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators JAX owns
    if cfg.source == "tfrecord":
        files = _split_files(cfg, split)
        spec = {cfg.text_key: tf.io.FixedLenFeature([], tf.string)}
        return TfStream(lambda: tf.data.TFRecordDataset(files).shard(num_shards, shard).map(
            lambda r: tf.io.parse_single_example(r, spec)), cfg.text_key)
    if cfg.source == "tfds":
        import tensorflow_datasets as tfds

        if not cfg.tfds_name:
            raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'c4/en:3.1.0')")
        name_split = cfg.train_split if split == "train" else cfg.eval_split
        sub_split = tfds.even_splits(name_split, n=num_shards)[shard]
        return TfStream(lambda: tfds.load(
            cfg.tfds_name, split=sub_split, data_dir=cfg.tfds_data_dir or None,
            shuffle_files=False,
            read_config=tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)),
            cfg.text_key)
    raise ValueError(f"data.source must be one of {source_names()}, got {cfg.source!r}")
