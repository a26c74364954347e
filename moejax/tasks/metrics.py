"""The official GLUE / SuperGLUE metrics, on decoded predictions.

Every metric takes (references, predictions, examples) and returns a score
in percent. `examples` are the raw task examples, for metrics that group
(MultiRC questions, AX-g's gender pairs). A prediction the postprocessor
could not parse (a label that is not one of the task's) is -1 and counts as
wrong.
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(refs, preds, examples=None) -> float:
    return 100.0 * float(np.mean(np.asarray(refs) == np.asarray(preds)))


def f1(refs, preds, examples=None) -> float:
    """Binary F1 of the positive class (label 1)."""
    return 100.0 * float(skm.f1_score(refs, preds, labels=[1], average="macro", zero_division=0))


def macro_f1(refs, preds, examples=None) -> float:
    """Mean F1 over the reference classes (CommitmentBank)."""
    labels = sorted(set(int(r) for r in refs))
    return 100.0 * float(skm.f1_score(refs, preds, labels=labels, average="macro", zero_division=0))


def matthews(refs, preds, examples=None) -> float:
    return 100.0 * float(skm.matthews_corrcoef(refs, preds))


def _correlation(statistic, refs, preds) -> float:
    """100 x statistic(refs, preds)[0]; an unparseable STS-B prediction
    scores as -1, as in T5, and constant predictions correlate 0."""
    r = np.asarray(refs, np.float64)
    p = np.nan_to_num(np.asarray(preds, np.float64), nan=-1.0)
    return 100.0 * float(np.nan_to_num(statistic(r, p)[0])) if np.std(p) > 0 else 0.0


def pearson(refs, preds, examples=None) -> float:
    return _correlation(stats.pearsonr, refs, preds)


def spearman(refs, preds, examples=None) -> float:
    return _correlation(stats.spearmanr, refs, preds)


def normalize_answer(text: str) -> str:
    """SQuAD / ReCoRD normalisation: lower case, no punctuation, no articles,
    single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def record_exact_match(refs: Sequence[Sequence[str]], preds: Sequence[str], examples=None) -> float:
    """Max over each query's gold answers of normalised exact match."""
    return 100.0 * float(np.mean([max(normalize_answer(p) == normalize_answer(a) for a in answers)
                                  for answers, p in zip(refs, preds)]))


def record_f1(refs: Sequence[Sequence[str]], preds: Sequence[str], examples=None) -> float:
    """Max over each query's gold answers of token F1."""
    return 100.0 * float(np.mean([max(_token_f1(p, a) for a in answers)
                                  for answers, p in zip(refs, preds)]))


def _multirc_question(example) -> tuple[int, int]:
    return int(example["idx"]["paragraph"]), int(example["idx"]["question"])


def multirc_exact_match(refs, preds, examples) -> float:
    """Fraction of questions whose every answer option is labelled right."""
    right = collections.defaultdict(list)
    for r, p, ex in zip(refs, preds, examples):
        right[_multirc_question(ex)].append(r == p)
    return 100.0 * float(np.mean([all(v) for v in right.values()]))


def multirc_f1a(refs, preds, examples=None) -> float:
    """F1 over all answer options (the true class), MultiRC's F1a."""
    return f1(refs, preds)


def gender_parity(refs, preds, examples) -> float:
    """AX-g's gender parity: the share of example pairs (idx 2k and 2k+1,
    the same sentence with the pronoun's gender swapped) given the same
    prediction. Pairs with one half missing are skipped; NaN when no pair
    is complete (`eval_examples` cut the set to one example, say)."""
    by_idx = {int(ex["idx"]): p for p, ex in zip(preds, examples)}
    same = [by_idx[i] == by_idx[i + 1] for i in by_idx if i % 2 == 0 and i + 1 in by_idx]
    return 100.0 * float(np.mean(same)) if same else float("nan")


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews": matthews,
    "pearson": pearson, "spearman": spearman, "exact_match": record_exact_match,
    "record_f1": record_f1, "multirc_exact_match": multirc_exact_match, "f1a": multirc_f1a,
    "gender_parity": gender_parity,
}
