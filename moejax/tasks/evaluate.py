"""Evaluation by decoding: predictions, official scores, leaderboard files.

For each evaluation set of a task or mixture, the inputs are decoded
(greedy, by the caller's `predict`), postprocessed and scored with the
task's metrics (validation split), and written in the leaderboard's format:
GLUE '<Task>.tsv' (index, prediction), SuperGLUE '<Task>.jsonl' ({"idx",
"label"}; MultiRC nested by paragraph and question). A set's score is the
mean of its metrics; a benchmark's average is the mean over its sets,
without the diagnostics (ax, axb, axg), MNLI counting matched and
mismatched separately.
"""
from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from moejax.data.tokenizer import Vocabulary
from moejax.tasks.base import EvalSet, Task, tasks_of
from moejax.tasks.source import load_split

SPLITS = ("validation", "test")


def encode_inputs(vocab: Vocabulary, texts: Sequence[str], length: int) -> np.ndarray:
    """int32 [N, length]: each text's tokens (truncated), EOS, then padding."""
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        tokens = vocab.encode_with_eos(text, length)
        out[i, :len(tokens)] = tokens
    return out


def decode_texts(predict: Callable[[np.ndarray], np.ndarray], vocab: Vocabulary,
                 texts: Sequence[str], length: int, batch_size: int, desc: str = "") -> list[str]:
    """Decoded output text per input text; `predict` maps int32 [batch_size,
    length] to output tokens [batch_size, T]. The last batch is padded with
    EOS-only rows."""
    tokens = encode_inputs(vocab, texts, length)
    pad = -len(tokens) % batch_size
    tokens = np.concatenate([tokens, np.tile(encode_inputs(vocab, [""], length), (pad, 1))])
    outputs = [predict(tokens[i:i + batch_size])
               for i in tqdm(range(0, len(tokens), batch_size), desc=desc, unit="batch",
                             leave=False, disable=jax.process_index() != 0)]
    return [vocab.decode(row) for row in np.concatenate(outputs)[:len(texts)]]


def write_submission(task: Task, eval_set: EvalSet, examples: list[dict], predictions: list,
                     out_dir: str) -> str:
    """Writes the leaderboard file of one evaluation set; returns its path."""
    rows = task.submission_rows(examples, predictions)
    directory = epath.Path(out_dir) / task.benchmark
    directory.mkdir(parents=True, exist_ok=True)
    if task.benchmark == "super_glue":
        path = directory / f"{eval_set.submission}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = directory / f"{eval_set.submission}.tsv"
        path.write_text("index\tprediction\n" + "".join(f"{r['idx']}\t{r['label']}\n"
                                                        for r in rows))
    return os.fspath(path)


def averages(scores: dict[str, dict[str, float]], tasks: Sequence[Task]) -> dict[str, float]:
    """'<benchmark>_average' over the scored sets of non-diagnostic tasks."""
    per_benchmark = collections.defaultdict(list)
    for task in tasks:
        for es in task.eval_sets:
            if es.name in scores and task.train_split is not None:
                per_benchmark[task.benchmark].append(scores[es.name]["score"])
    return {f"{b}_average": float(np.mean(v)) for b, v in per_benchmark.items()}


def markdown_table(scores: dict[str, dict[str, float]], avgs: dict[str, float]) -> str:
    if not scores:
        return "No labelled examples were decoded (test split): see the leaderboard files.\n"
    lines = ["| eval set | score | metrics |", "|---|---:|---|"]
    for name, s in scores.items():
        detail = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k != "score")
        lines.append(f"| {name} | {s['score']:.2f} | {detail} |")
    lines += [f"| **{name}** | **{v:.2f}** | |" for name, v in avgs.items()]
    return "\n".join(lines) + "\n"


def eval_splits(name: str, split: str) -> list[tuple[Task, EvalSet, str]]:
    """(task, eval set, tfds split) of every set of task/mixture `name` that
    has a `split` ('validation' or 'test') split."""
    if split not in SPLITS:
        raise ValueError(f"evaluation split must be one of {SPLITS}, got {split!r}")
    sets = [(task, es, es.validation if split == "validation" else es.test)
            for task in tasks_of(name) for es in task.eval_sets]
    return [s for s in sets if s[2] is not None]


def check_eval_data(name: str, split: str, data_dir: str) -> None:
    """Reads (and caches) every split `evaluate_tasks` will decode, so that
    missing data fails before any compute (DatasetNotPrepared)."""
    for task, _, tfds_split in eval_splits(name, split):
        load_split(task, tfds_split, data_dir)


def evaluate_tasks(name: str, split: str, data_dir: str, vocab: Vocabulary,
                   predict: Callable[[np.ndarray], np.ndarray], inputs_length: int,
                   batch_size: int, max_examples: int, out_dir: str) -> dict[str, float]:
    """Decodes every evaluation set of task/mixture `name` on `split`
    ('validation' scores and writes predictions; 'test' writes the
    leaderboard files and scores only the sets with public test labels).
    Writes scores.json and scores.md to `out_dir` and returns flat scores
    {'glue_sst2/accuracy': ..., 'glue_average': ...}.
    `max_examples` > 0 decodes only the first examples of each set."""
    scores: dict[str, dict[str, float]] = {}
    for task, es, tfds_split in eval_splits(name, split):
        examples = list(load_split(task, tfds_split, data_dir))[:max_examples or None]
        texts = decode_texts(predict, vocab, [task.inputs(ex) for ex in examples],
                             inputs_length, batch_size, desc=f"decode {es.name}")
        predictions = [task.postprocess(t, ex) for t, ex in zip(texts, examples)]
        write_submission(task, es, examples, predictions, out_dir)
        if split == "validation" or es.test_labelled:
            s = task.score(examples, predictions)
            scores[es.name] = {**s, "score": float(np.mean(list(s.values())))}
    avgs = averages(scores, tasks_of(name))
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps({"split": split, "scores": scores, **avgs},
                                                indent=2))
    (out / "scores.md").write_text(markdown_table(scores, avgs))
    flat = {f"{es}/{metric}": v for es, s in scores.items() for metric, v in s.items()}
    return {**flat, **avgs}
