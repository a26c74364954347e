"""Fine-tuning examples of a task or mixture as a pipeline source.

Examples-proportional mixing (T5): every epoch takes each task's training
examples (at most `cap` of them, a fresh random subset each epoch, when
`cap` > 0) and visits their union in a random order, so a task's share of
the mixture is proportional to its size. Input shard s of n takes every
n-th example of that order. Items are (input text, target text) pairs.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

from moejax.data import seeded_rng
from moejax.data.sources import register_source
from moejax.tasks.base import Task, tasks_of


@functools.cache
def load_split(task: Task, split: str, data_dir: str) -> tuple[dict, ...]:
    """A task split's raw examples, read once per process."""
    return tuple(task.load(split, data_dir))


class TaskMixture:
    def __init__(self, name: str, split: str, data_dir: str, shard: int, num_shards: int,
                 seed: int, cap: int):
        """split: 'train' (training splits) or 'eval' (the first validation
        split of each task, for the held-out loss)."""
        self.pools = []
        for task in tasks_of(name):
            tfds_split = task.train_split if split == "train" else task.eval_sets[0].validation
            if tfds_split is not None:
                pairs = task.pairs(list(load_split(task, tfds_split, data_dir)))
                if pairs:
                    self.pools.append(pairs)
        if not self.pools:
            raise ValueError(f"task {name!r} has no labelled {split} examples (the diagnostics "
                             f"ax/axb/axg are evaluation-only: train on mnli/rte)")
        self.shard, self.num_shards, self.seed, self.cap = shard, num_shards, seed, cap

    def iterate(self, start: int, epoch: int) -> Iterator[tuple[int, tuple[str, str]]]:
        rng = seeded_rng(self.seed, epoch)
        items = []
        for pool in self.pools:
            take = rng.permutation(len(pool))[:self.cap or None]
            items.extend(pool[i] for i in take)
        mine = rng.permutation(len(items))[self.shard::self.num_shards]
        for i in range(start, len(mine)):
            yield i, items[mine[i]]


def _make(cfg, split: str, shard: int, num_shards: int) -> TaskMixture:
    return TaskMixture(cfg.task, split, cfg.tfds_data_dir, shard, num_shards, cfg.seed,
                       cfg.mixing_cap)


def _validate(cfg) -> None:
    tasks_of(cfg.task)  # names the known tasks when unknown
    if cfg.eval_split not in ("validation", "test"):
        raise ValueError(f"with source 'task', eval_split must be 'validation' or 'test', "
                         f"got {cfg.eval_split!r}")


# Checking a split reads (and caches) the task's examples: a dataset that is
# not prepared fails before training.
register_source("task", _make, _validate, check=lambda cfg, split: _make(cfg, split, 0, 1))
