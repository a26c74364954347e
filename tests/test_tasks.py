"""Fine-tuning tasks: T5 text formats, official metrics against hand-computed
values, tfds loading (mock data), mixing, leaderboard files, errors."""
import collections
import json
import math
import os

import numpy as np
import pytest

from moejax.tasks import DatasetNotPrepared, get_task, known_names, tasks_of
from moejax.tasks import metrics as M
from moejax.tasks.evaluate import averages, write_submission
from moejax.tasks.glue import wsc_matches
from moejax.tasks.source import TaskMixture

# (task, raw example, expected inputs, expected training targets)
FORMATS = [
    ("glue_cola", {"sentence": "It rains.", "label": 1, "idx": 0},
     "cola sentence: It rains.", ["acceptable"]),
    ("glue_sst2", {"sentence": "great film", "label": 0, "idx": 0},
     "sst2 sentence: great film", ["negative"]),
    ("glue_mrpc", {"sentence1": "A b.", "sentence2": "B a.", "label": 1, "idx": 0},
     "mrpc sentence1: A b. sentence2: B a.", ["equivalent"]),
    ("glue_qqp", {"question1": "Why?", "question2": "How?", "label": 0, "idx": 0},
     "qqp question1: Why? question2: How?", ["not_duplicate"]),
    ("glue_stsb", {"sentence1": "x", "sentence2": "y", "label": 3.77, "idx": 0},
     "stsb sentence1: x sentence2: y", ["3.8"]),
    ("glue_mnli", {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
     "mnli hypothesis: H. premise: P.", ["contradiction"]),
    ("glue_qnli", {"question": "Q?", "sentence": "S.", "label": 1, "idx": 0},
     "qnli question: Q? sentence: S.", ["not_entailment"]),
    ("glue_rte", {"sentence1": "S1.", "sentence2": "S2.", "label": 0, "idx": 0},
     "rte sentence1: S1. sentence2: S2.", ["entailment"]),
    ("glue_wnli", {"sentence1": "S1.", "sentence2": "S2.", "label": 1, "idx": 0},
     "wnli sentence1: S1. sentence2: S2.", ["entailment"]),
    ("glue_ax", {"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 0},
     "mnli hypothesis: H. premise: P.", []),
    ("super_glue_boolq", {"passage": "Sky is blue.", "question": "is sky blue", "label": 1,
                          "idx": 0}, "boolq passage: Sky is blue. question: is sky blue", ["True"]),
    ("super_glue_cb", {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
     "cb hypothesis: H. premise: P.", ["neutral"]),
    ("super_glue_copa", {"premise": "It fell.", "choice1": "c1", "choice2": "c2",
                         "question": "cause", "label": 1, "idx": 0},
     "copa choice1: c1 choice2: c2 premise: It fell. question: cause", ["choice2"]),
    ("super_glue_multirc", {"paragraph": "<b>Sent 1: </b>A b.<br><b>Sent 2: </b>C d.",
                            "question": "Q?", "answer": "A", "label": 0,
                            "idx": {"paragraph": 0, "question": 0, "answer": 0}},
     "multirc question: Q? answer: A paragraph: A b. C d.", ["False"]),
    ("super_glue_record", {"passage": "Rain falls.\n@highlight\nWet streets\n@highlight\nCold",
                           "query": "@placeholder is wet", "entities": ["Rain", "Streets"],
                           "answers": ["Streets", "streets"], "idx": {"passage": 0, "query": 0}},
     "record query: @placeholder is wet entities: Rain, Streets passage: Rain falls. Wet "
     "streets. Cold", ["Streets", "streets"]),
    ("super_glue_rte", {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0},
     "rte hypothesis: H. premise: P.", ["not_entailment"]),
    ("super_glue_wic", {"sentence1": "A bank.", "sentence2": "River bank.", "word": "bank",
                        "label": 0, "idx": 0, "start1": 2, "start2": 6, "end1": 6, "end2": 10},
     "wic sentence1: A bank. sentence2: River bank. word: bank", ["False"]),
    ("super_glue_wsc", {"text": "Mark told Pete many lies about himself , which he believed .",
                        "span1_text": "Pete", "span2_text": "he", "span1_index": 2,
                        "span2_index": 9, "label": 1, "idx": 0},
     "wsc: Mark told Pete many lies about himself , which *he* believed .", ["Pete"]),
    ("super_glue_axb", {"sentence1": "S1.", "sentence2": "S2.", "label": 0, "idx": 0},
     "rte hypothesis: S2. premise: S1.", ["entailment"]),
    ("super_glue_axg", {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0},
     "rte hypothesis: H. premise: P.", ["not_entailment"]),
]


def test_every_task_has_a_format_case():
    assert {t for t, *_ in FORMATS} | {"embedded_topics"} == set(
        n for n in known_names() if not n.endswith("_mixture"))


@pytest.mark.parametrize("name,example,inputs,targets", FORMATS, ids=[f[0] for f in FORMATS])
def test_t5_formats(name, example, inputs, targets):
    task = get_task(name)
    assert task.inputs(example) == inputs
    assert task.targets(example) == targets
    ref = task.reference(example)
    for target in targets:  # decoding the target gives the reference back
        pred = task.postprocess(target, example)
        if name == "super_glue_record":
            assert pred in ref
        elif name == "glue_stsb":  # targets sit on the 0.2 grid
            assert pred == pytest.approx(ref, abs=0.1)
        else:
            assert pred == ref


def test_postprocess_of_bad_outputs():
    assert get_task("glue_sst2").postprocess("positive ", {}) == 1
    assert get_task("glue_sst2").postprocess("great", {}) == -1
    assert math.isnan(get_task("glue_stsb").postprocess("n/a", {}))
    wsc = get_task("super_glue_wsc")
    assert wsc.postprocess("the Pete", {"span1_text": "Pete"}) == 1
    assert wsc.postprocess("Mark", {"span1_text": "Pete"}) == 0
    assert wsc_matches("the big dog", "dog") and not wsc_matches("", "dog")


def test_classification_metrics_hand_computed():
    refs = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 1, 0, 0, 1, 0, 1, -1]  # -1: unparseable, always wrong
    tp, fp, fn = 3, 1, 1  # the -1 on a 0 reference is neither a tp nor an fp
    assert M.accuracy(refs, preds) == pytest.approx(100 * 5 / 8)
    assert M.f1(refs, preds) == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) with tp=1, tn=2, fp=0, fn=1.
    assert M.matthews([1, 1, 0, 0, 0], [1, 0, 0, 0, 0]) == pytest.approx(
        100 * (1 * 3 - 0 * 1) / math.sqrt((1 + 0) * (1 + 1) * (3 + 0) * (3 + 1)))
    # F1 per class: 1.0, 0.0 (no correct 1s), 0.8 (2 of 3 predicted 2s right, both found).
    assert M.macro_f1([0, 1, 2, 2], [0, 2, 2, 2]) == pytest.approx(100 * (1 + 0 + 0.8) / 3)


def test_correlations_hand_computed():
    refs, preds = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert M.pearson(refs, preds) == pytest.approx(100 * 0.8)  # cov 1.0 / var 1.25
    assert M.spearman(refs, preds) == pytest.approx(100 * (1 - 6 * 2 / (4 * 15)))
    assert M.pearson(refs, [math.nan, 2.0, 3.0, 4.0]) < 100  # nan scores as -1


def test_record_and_multirc_metrics():
    refs = [["The Cat", "cat"], ["big red dog"]]
    assert M.record_exact_match(refs, ["cat.", "red dog"]) == 50.0
    # second: precision 2/2, recall 2/3 -> F1 0.8
    assert M.record_f1(refs, ["cat.", "red dog"]) == pytest.approx(100 * (1 + 0.8) / 2)
    ex = lambda q: {"idx": {"paragraph": 0, "question": q, "answer": 0}}
    examples = [ex(0), ex(0), ex(1), ex(1)]
    refs, preds = [1, 0, 1, 1], [1, 0, 1, 0]
    assert M.multirc_exact_match(refs, preds, examples) == 50.0
    assert M.multirc_f1a(refs, preds) == pytest.approx(100 * 2 * 2 / (2 * 2 + 0 + 1))


def test_axg_gender_parity_hand_computed():
    # Pairs (0, 1) agree, (2, 3) differ, (4, 5) agree; 7 has no partner.
    # Shuffled, since the metric pairs by idx, not by position.
    idx = [3, 0, 5, 1, 2, 7, 4]
    preds = [1, 0, 1, 0, 0, 1, 1]
    examples = [{"idx": i} for i in idx]
    assert M.gender_parity([0] * 7, preds, examples) == pytest.approx(200 / 3)
    assert math.isnan(M.gender_parity([0, 0], [1, 1], [{"idx": 1}, {"idx": 2}]))
    assert tuple(get_task("super_glue_axg").metrics) == ("gender_parity", "accuracy")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: .*glue_sst2.*super_glue_mixture"):
        tasks_of("glue_sst3")


def test_missing_dataset_explains_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPrepared, match=r"tfds build glue/sst2 .*network.*manual"):
        get_task("glue_sst2").load("validation", str(tmp_path))


def test_mock_tfds_loading_and_examples_proportional_mixing(mock_tfds):
    with mock_tfds(30):
        mnli = get_task("glue_mnli")
        assert [s.validation for s in mnli.eval_sets] == ["validation_matched",
                                                          "validation_mismatched"]
        examples = mnli.load("validation_matched", "")
        assert len(examples) == 30 and isinstance(examples[0]["premise"], str)
        record = get_task("super_glue_record").load("train", "")
        assert isinstance(record[0]["answers"], list) and isinstance(record[0]["idx"], dict)
        mix = TaskMixture("glue_mixture", "train", "", 0, 1, seed=0, cap=0)
        # Every training task's examples once per epoch (ax has no training split).
        assert len(mix.pools) == 9
        first = [item for _, item in mix.iterate(0, 0)]
        assert len(first) == sum(len(p) for p in mix.pools)
        capped = TaskMixture("glue_mixture", "train", "", 0, 1, seed=0, cap=10)
        prefixes = collections.Counter(i.split(" ")[0] for _, (i, _) in capped.iterate(0, 0))
        assert set(prefixes.values()) == {10}
        shards = [TaskMixture("glue_sst2", "train", "", s, 2, 0, 0) for s in range(2)]
        halves = [[i for _, i in sh.iterate(0, 1)] for sh in shards]
        assert sorted(halves[0] + halves[1]) == sorted(first_sst2 := [
            i for _, i in TaskMixture("glue_sst2", "train", "", 0, 1, 0, 0).iterate(0, 1)])
        assert len(first_sst2) == 30


def test_leaderboard_files(tmp_path):
    sst2 = get_task("glue_sst2")
    examples = [{"idx": 7, "label": -1}, {"idx": 3, "label": -1}]
    path = write_submission(sst2, sst2.eval_sets[0], examples, [1, -1], str(tmp_path))
    assert path.endswith("glue/SST-2.tsv")
    assert open(path).read() == "index\tprediction\n7\t1\n3\t0\n"
    multirc = get_task("super_glue_multirc")
    ex = lambda p, q, a: {"idx": {"paragraph": p, "question": q, "answer": a}}
    path = write_submission(multirc, multirc.eval_sets[0], [ex(0, 0, 0), ex(0, 0, 1), ex(0, 1, 2)],
                            [1, 0, 1], str(tmp_path))
    rows = [json.loads(line) for line in open(path)]
    assert rows == [{"idx": 0, "passage": {"questions": [
        {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
        {"idx": 1, "answers": [{"idx": 2, "label": 1}]}]}}]
    boolq = get_task("super_glue_boolq")
    path = write_submission(boolq, boolq.eval_sets[0], [{"idx": 0}], [1], str(tmp_path))
    assert json.loads(open(path).read()) == {"idx": 0, "label": "true"}


def test_benchmark_averages_skip_diagnostics():
    scores = {"glue_cola": {"score": 40.0}, "glue_sst2": {"score": 90.0}, "glue_ax": {"score": 0.0}}
    assert averages(scores, tasks_of("glue_mixture")) == {"glue_average": 65.0}


def test_diagnostics_are_scored_on_their_labelled_test_split(tmp_path, monkeypatch):
    from moejax.data import corpus, tokenizer
    from moejax.tasks import evaluate

    texts = list(corpus.documents(0, 200)) + ["rte hypothesis: premise: not_entailment"] * 20
    vocab = tokenizer.train(texts, 300, 20, str(tmp_path / "spm.model"))
    pronouns, labels = ["he", "she", "he", "he", "she", "she"], [0, 1, 0, 1, 1, 1]
    examples = [{"idx": i, "premise": f"Then {p} left.", "hypothesis": "Someone left.",
                 "label": y} for i, (p, y) in enumerate(zip(pronouns, labels))]
    monkeypatch.setattr(evaluate, "load_split", lambda task, split, data_dir: examples)

    def predict(tokens):  # "not_entailment" exactly when the premise says "she"
        answers = ["not_entailment" if " she " in vocab.decode(row) else "entailment"
                   for row in tokens]
        ids = [vocab.encode_with_eos(a, 16) for a in answers]
        return np.stack([np.pad(i, (0, 16 - len(i))) for i in ids])  # 0 = padding

    out = str(tmp_path / "eval")
    scores = evaluate.evaluate_tasks("super_glue_axg", "test", "", vocab, predict, 64, 4, 0, out)
    # predictions [0, 1, 0, 0, 1, 1]: pairs (0,1) differ, (2,3) and (4,5) agree
    assert scores["super_glue_axg/gender_parity"] == pytest.approx(200 / 3)
    assert scores["super_glue_axg/accuracy"] == pytest.approx(500 / 6)
    assert "super_glue_average" not in scores  # diagnostics stay out of the averages
    rows = [json.loads(r) for r in open(os.path.join(out, "super_glue", "AX-g.jsonl"))]
    assert [r["label"] for r in rows] == ["entailment", "not_entailment"] + ["entailment"] * 2 \
        + ["not_entailment"] * 2
