"""GLUE and SuperGLUE in the T5 paper's text-to-text formats.

Inputs are "<task> key: value key: value ..." (T5's `glue` preprocessor:
the example's text features in alphabetical order unless T5 fixed an
order), targets the label name. Exceptions, as in T5: STS-B targets the
score rounded to the 0.2 grid ("3.8"); ReCoRD gives one training example per
gold answer and joins the passage's "@highlight" lines; WSC marks the
pronoun with asterisks and targets the noun it refers to (training on the
true pairs only; a prediction is "true" when it matches the candidate); the
diagnostics (ax, axb, axg) are read with the MNLI / RTE prefixes of the
models that are evaluated on them.

Leaderboard values: GLUE wants 0/1 for CoLA, SST-2, MRPC, QQP and WNLI,
label names for the NLI tasks; SuperGLUE wants "true"/"false" for BoolQ,
WiC and WSC, indices for COPA and MultiRC, names for the NLI tasks.
"""
from __future__ import annotations

import collections
import math
import re
from collections.abc import Sequence

from moejax.tasks.base import (
    EvalSet,
    Task,
    classification,
    eval_sets,
    register,
    register_mixture,
    tfds_loader,
)


def _fields(prefix: str, keys: Sequence[str], rename: dict[str, str] | None = None):
    """inputs(ex): "<prefix> key: ex[key] ..."; `rename` maps a shown key to
    the example's feature."""
    rename = rename or {}
    return lambda ex: " ".join([prefix] + [f"{k}: {ex[rename.get(k, k)]}" for k in keys])


def _classification(name, benchmark, tfds_name, prefix, keys, names, metrics, submission,
                    rename=None, inputs=None, **kwargs) -> Task:
    return classification(name, benchmark, tfds_loader(tfds_name),
                          inputs or _fields(prefix, keys, rename), names, metrics, submission,
                          **kwargs)


# --- GLUE -------------------------------------------------------------------
NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
_classification("glue_cola", "glue", "glue/cola", "cola", ["sentence"],
                ("unacceptable", "acceptable"), ("matthews",), "CoLA")
_classification("glue_sst2", "glue", "glue/sst2", "sst2", ["sentence"], ("negative", "positive"),
                ("accuracy",), "SST-2")
_classification("glue_mrpc", "glue", "glue/mrpc", "mrpc", ["sentence1", "sentence2"],
                ("not_equivalent", "equivalent"), ("f1", "accuracy"), "MRPC")
_classification("glue_qqp", "glue", "glue/qqp", "qqp", ["question1", "question2"],
                ("not_duplicate", "duplicate"), ("f1", "accuracy"), "QQP")
_classification("glue_mnli", "glue", "glue/mnli", "mnli", ["hypothesis", "premise"], NLI3,
                ("accuracy",), "MNLI", submit="name", sets=(
                    EvalSet("glue_mnli_matched", "validation_matched", "test_matched", "MNLI-m"),
                    EvalSet("glue_mnli_mismatched", "validation_mismatched", "test_mismatched",
                            "MNLI-mm")))
_classification("glue_qnli", "glue", "glue/qnli", "qnli", ["question", "sentence"], NLI2,
                ("accuracy",), "QNLI", submit="name")
_classification("glue_rte", "glue", "glue/rte", "rte", ["sentence1", "sentence2"], NLI2,
                ("accuracy",), "RTE", submit="name")
_classification("glue_wnli", "glue", "glue/wnli", "wnli", ["sentence1", "sentence2"],
                ("not_entailment", "entailment"), ("accuracy",), "WNLI")
# The diagnostic set is scored with the MNLI model, so it reads as MNLI.
_classification("glue_ax", "glue", "glue/ax", "mnli", ["hypothesis", "premise"], NLI3,
                ("matthews",), "AX", submit="name", train_split=None,
                sets=eval_sets("glue_ax", "AX", validation=None))


def _stsb_target(ex) -> list[str]:
    return [f"{round(ex['label'] * 5) / 5:.1f}"] if ex["label"] >= 0 else []


def _to_float(text: str, ex) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


register(Task(
    name="glue_stsb", benchmark="glue", load=tfds_loader("glue/stsb"),
    inputs=_fields("stsb", ["sentence1", "sentence2"]), targets=_stsb_target,
    reference=lambda ex: ex["label"], postprocess=_to_float, metrics=("pearson", "spearman"),
    train_split="train", eval_sets=eval_sets("glue_stsb", "STS-B"),
    submit=lambda p: 0.0 if math.isnan(p) else min(max(p, 0.0), 5.0)))

# --- SuperGLUE --------------------------------------------------------------
BOOL = ("False", "True")
_classification("super_glue_boolq", "super_glue", "super_glue/boolq", "boolq",
                ["passage", "question"], BOOL, ("accuracy",), "BoolQ", submit="lower")
_classification("super_glue_cb", "super_glue", "super_glue/cb", "cb", ["hypothesis", "premise"],
                ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"), "CB",
                submit="name")
_classification("super_glue_copa", "super_glue", "super_glue/copa", "copa",
                ["choice1", "choice2", "premise", "question"], ("choice1", "choice2"),
                ("accuracy",), "COPA")
_classification("super_glue_rte", "super_glue", "super_glue/rte", "rte", ["hypothesis", "premise"],
                NLI2, ("accuracy",), "RTE", submit="name")
_classification("super_glue_wic", "super_glue", "super_glue/wic", "wic",
                ["sentence1", "sentence2", "word"], BOOL, ("accuracy",), "WiC", submit="lower")
# Diagnostics, scored with the RTE model on their labelled test splits.
_classification("super_glue_axb", "super_glue", "super_glue/axb", "rte", ["hypothesis", "premise"],
                NLI2, ("matthews",), "AX-b", submit="name", train_split=None,
                rename={"hypothesis": "sentence2", "premise": "sentence1"},
                sets=eval_sets("super_glue_axb", "AX-b", validation=None, test_labelled=True))
_classification("super_glue_axg", "super_glue", "super_glue/axg", "rte", ["hypothesis", "premise"],
                NLI2, ("gender_parity", "accuracy"), "AX-g", submit="name", train_split=None,
                sets=eval_sets("super_glue_axg", "AX-g", validation=None, test_labelled=True))


def _multirc_inputs(ex) -> str:
    # T5 strips MultiRC's HTML markup (<b>Sent 1: </b>, <br>).
    paragraph = " ".join(re.sub(r"<b>Sent \d+: </b>|<br>|</?b>", " ", ex["paragraph"]).split())
    return f"multirc question: {ex['question']} answer: {ex['answer']} paragraph: {paragraph}"


def _multirc_rows(submit, examples, predictions) -> list[dict]:
    """MultiRC's leaderboard records: answers nested by paragraph and question."""
    tree = collections.defaultdict(lambda: collections.defaultdict(list))
    for ex, p in zip(examples, predictions):
        idx = ex["idx"]
        tree[idx["paragraph"]][idx["question"]].append({"idx": idx["answer"], "label": submit(p)})
    return [{"idx": para, "passage": {"questions": [
        {"idx": q, "answers": answers} for q, answers in questions.items()]}}
        for para, questions in tree.items()]


_classification("super_glue_multirc", "super_glue", "super_glue/multirc", "multirc", [], BOOL,
                ("multirc_exact_match", "f1a"), "MultiRC", inputs=_multirc_inputs,
                leaderboard_rows=_multirc_rows)


def _record_inputs(ex) -> str:
    passage = re.sub(r"(\.|\?|!|\"|')\n@highlight\n", r"\1 ", ex["passage"])
    passage = re.sub(r"\n@highlight\n", ". ", passage)
    return (f"record query: {ex['query']} entities: {', '.join(ex['entities'])} "
            f"passage: {passage}")


register(Task(
    name="super_glue_record", benchmark="super_glue", load=tfds_loader("super_glue/record"),
    inputs=_record_inputs, targets=lambda ex: list(ex["answers"]),
    reference=lambda ex: list(ex["answers"]) or [""], postprocess=lambda text, ex: text.strip(),
    metrics=("exact_match", "record_f1"), train_split="train",
    eval_sets=eval_sets("super_glue_record", "ReCoRD"), submit=str,
    leaderboard_rows=lambda submit, examples, predictions: [  # one record per query
        {"idx": ex["idx"]["query"], "label": submit(p)} for ex, p in zip(examples, predictions)]))

_DETERMINERS = {"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our",
                "some", "that", "the", "their", "these", "this", "those", "which", "whose", "your"}


def _content_words(text: str) -> set[str]:
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return {w for w in words if w not in _DETERMINERS}


def wsc_matches(prediction: str, referent: str) -> bool:
    """T5's WSC test: the predicted noun phrase and the candidate share their
    content words (one contains the other), ignoring determiners."""
    p, r = _content_words(prediction), _content_words(referent)
    return bool(p) and bool(r) and (p <= r or r <= p)


def _wsc_inputs(ex) -> str:
    words = ex["text"].split(" ")
    start, length = ex["span2_index"], len(ex["span2_text"].split(" "))
    marked = words[:start] + ["*" + " ".join(words[start:start + length]) + "*"] + \
        words[start + length:]
    return "wsc: " + " ".join(marked)


register(Task(
    name="super_glue_wsc", benchmark="super_glue", load=tfds_loader("super_glue/wsc.fixed"),
    inputs=_wsc_inputs, targets=lambda ex: [ex["span1_text"]] if ex["label"] == 1 else [],
    reference=lambda ex: ex["label"],
    postprocess=lambda text, ex: int(wsc_matches(text, ex["span1_text"])),
    metrics=("accuracy",), train_split="train", eval_sets=eval_sets("super_glue_wsc", "WSC"),
    submit=lambda p: "true" if p == 1 else "false"))

GLUE = ("glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli", "glue_qnli",
        "glue_rte", "glue_wnli", "glue_ax")
SUPER_GLUE = ("super_glue_boolq", "super_glue_cb", "super_glue_copa", "super_glue_multirc",
              "super_glue_record", "super_glue_rte", "super_glue_wic", "super_glue_wsc",
              "super_glue_axb", "super_glue_axg")
register_mixture("glue_mixture", GLUE)
register_mixture("super_glue_mixture", SUPER_GLUE)
