"""Task: one text-to-text fine-tuning task, from raw examples to scores.

A task turns raw examples (dicts, as tensorflow-datasets yields them, with
text decoded) into input text and training target texts, and turns decoded
predictions back into values its metrics compare with the references. Its
evaluation sets name the labelled (validation) and leaderboard (test)
splits; MNLI has two (matched and mismatched).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from moejax.data.sources import not_prepared
from moejax.tasks.metrics import METRICS

BENCHMARKS = ("glue", "super_glue", "embedded")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """name: the score's key; validation / test: splits (None: absent);
    submission: leaderboard file stem (GLUE '<stem>.tsv', SuperGLUE
    '<stem>.jsonl'); test_labelled: the test split's labels are public
    (SuperGLUE's diagnostics), so it is scored too."""

    name: str
    validation: str | None
    test: str | None
    submission: str
    test_labelled: bool = False


@dataclasses.dataclass(frozen=True)
class Task:
    """name: registry key ('glue_sst2'); benchmark: one of BENCHMARKS.
    load(split, data_dir) -> raw examples.
    inputs(ex) -> input text; targets(ex) -> training target texts (one
      training example each; [] leaves the example out of training).
    reference(ex) -> what metrics compare with; postprocess(text, ex) ->
      the prediction in the reference's terms.
    metrics: names in moejax.tasks.metrics.METRICS; the task's score is
      their mean.
    train_split: None for evaluation-only tasks (the diagnostics).
    submit(prediction) -> the value the leaderboard file holds.
    leaderboard_rows(submit, examples, predictions) -> the leaderboard
      file's records, for tasks whose file is not one {"idx", "label"} per
      example (None: that flat form).
    """

    name: str
    benchmark: str
    load: Callable[[str, str], list[dict]]
    inputs: Callable[[dict], str]
    targets: Callable[[dict], list[str]]
    reference: Callable[[dict], Any]
    postprocess: Callable[[str, dict], Any]
    metrics: tuple[str, ...]
    train_split: str | None
    eval_sets: tuple[EvalSet, ...]
    submit: Callable[[Any], Any]
    leaderboard_rows: Callable[[Callable, list[dict], list], list[dict]] | None = None

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or self.benchmark not in BENCHMARKS:
            raise ValueError(f"task {self.name!r}: unknown metrics {unknown} or benchmark "
                             f"{self.benchmark!r}")

    def pairs(self, examples: list[dict]) -> list[tuple[str, str]]:
        """(input text, target text) training examples."""
        return [(self.inputs(ex), t) for ex in examples for t in self.targets(ex)]

    def submission_rows(self, examples: list[dict], predictions: list) -> list[dict]:
        if self.leaderboard_rows is not None:
            return self.leaderboard_rows(self.submit, examples, predictions)
        return [{"idx": ex["idx"], "label": self.submit(p)} for ex, p in zip(examples, predictions)]

    def score(self, examples: list[dict], predictions: list) -> dict[str, float]:
        refs = [self.reference(ex) for ex in examples]
        return {m: METRICS[m](refs, predictions, examples) for m in self.metrics}


TASKS: dict[str, Task] = {}
MIXTURES: dict[str, tuple[str, ...]] = {}


def register(task: Task) -> Task:
    if task.name in TASKS or task.name in MIXTURES:
        raise ValueError(f"task name {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def register_mixture(name: str, tasks: tuple[str, ...]) -> None:
    if name in TASKS or name in MIXTURES:
        raise ValueError(f"mixture name {name!r} is already registered")
    MIXTURES[name] = tuple(get_task(t).name for t in tasks)


def known_names() -> list[str]:
    return sorted(TASKS) + sorted(MIXTURES)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def tasks_of(name: str) -> list[Task]:
    """The tasks of a task or mixture name."""
    if name in MIXTURES:
        return [TASKS[t] for t in MIXTURES[name]]
    if name in TASKS:
        return [TASKS[name]]
    raise ValueError(f"unknown task or mixture {name!r}; known: {', '.join(known_names())}")


def label_index(names: Sequence[str]) -> Callable[[str, dict], int]:
    """postprocess: decoded text -> label index, -1 for anything else."""
    return lambda text, ex: names.index(text.strip()) if text.strip() in names else -1


# How a leaderboard file writes a class prediction (-1, unparseable, is
# written as the first class).
SUBMIT: dict[str, Callable] = {
    "index": lambda names: lambda p: max(int(p), 0),
    "name": lambda names: lambda p: names[max(p, 0)],
    "lower": lambda names: lambda p: names[max(p, 0)].lower(),
}


def eval_sets(name: str, submission: str, validation: str | None = "validation",
              test: str | None = "test", test_labelled: bool = False) -> tuple[EvalSet, ...]:
    return (EvalSet(name, validation, test, submission, test_labelled),)


def classification(name: str, benchmark: str, load, inputs, names: Sequence[str],
                   metrics: tuple[str, ...], submission: str, submit: str = "index",
                   train_split: str | None = "train", sets: tuple[EvalSet, ...] | None = None,
                   leaderboard_rows: Callable | None = None) -> Task:
    """Registers a task whose target is the name of class ex['label']
    (negative labels, unlabelled test examples, are not trained on)."""
    return register(Task(
        name=name, benchmark=benchmark, load=load, inputs=inputs,
        targets=lambda ex: [names[ex["label"]]] if ex["label"] >= 0 else [],
        reference=lambda ex: ex["label"], postprocess=label_index(names), metrics=metrics,
        train_split=train_split, eval_sets=sets or eval_sets(name, submission),
        submit=SUBMIT[submit](names), leaderboard_rows=leaderboard_rows))


def _python(value):
    """numpy / bytes values of a tfds example as plain Python."""
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def tfds_loader(name: str) -> Callable[[str, str], list[dict]]:
    """load(split, data_dir) for the tensorflow-datasets dataset `name`,
    read whole into memory (GLUE and SuperGLUE are small)."""

    def load(split: str, data_dir: str) -> list[dict]:
        import tensorflow_datasets as tfds

        try:
            ds = tfds.load(name, split=split, data_dir=data_dir or None, download=False,
                           shuffle_files=False)
        except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
            raise not_prepared(name, split, data_dir, str(e).splitlines()[0]) from None
        return [_python(ex) for ex in tfds.as_numpy(ds)]

    return load
