"""Input pipeline: span corruption, packing, tokenizer and resumable streams."""
import dataclasses

import numpy as np
import pytest

from moejax.data import corpus, tokenizer
from moejax.data.objectives import Objective, noise_mask, span_corrupt, span_corruption_lengths
from moejax.data.pipeline import FEATURES, Packer, Pipeline, Position, examples
from moejax.train.config import DataConfig


def test_span_corruption_lengths_match_t5():
    # T5's random_spans_helper gives 568 raw tokens and 114 targets for
    # 512 inputs at density 0.15, mean span 3 (the C4 pretraining setting).
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)


@pytest.mark.parametrize("length,density,span",
                         [(100, 0.15, 3.0), (37, 0.3, 2.0), (568, 0.15, 3.0)])
def test_noise_mask_counts_and_alternation(length, density, span):
    mask = noise_mask(length, density, span, np.random.RandomState(0))
    num_noise = int(round(length * density))
    assert mask.shape == (length,) and mask.sum() == num_noise
    starts = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int)])) == 1)
    assert len(starts) == int(round(num_noise / span))
    assert not mask[0]  # non-noise first, as in T5


def test_span_corruption_inverts():
    rng = np.random.RandomState(3)
    tokens = rng.randint(3, 300, 57).astype(np.int32)
    mask = noise_mask(57, 0.15, 3.0, rng)
    sentinel = lambda i: 1000 - i
    inputs, targets = span_corrupt(tokens, mask, sentinel)
    assert inputs[-1] == targets[-1] == tokenizer.EOS_ID
    # Replace each sentinel of the inputs by the span after it in the targets.
    spans, current = {}, None
    for t in targets[:-1]:
        if t > 900:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t > 900 else [t])]
    np.testing.assert_array_equal(rebuilt, tokens)
    assert len(spans) == np.sum(np.diff(np.concatenate([[0], mask.astype(int)])) == 1)


def test_objectives_fit_their_lengths():
    rng = np.random.RandomState(0)
    tokens = rng.randint(3, 300, 1000).astype(np.int32)
    for name in ("span_corruption", "prefix_lm", "lm"):
        obj = Objective(name, inputs_length=64, targets_length=20)
        obj.check_lengths()
        examples = list(obj.examples(tokens, rng, lambda i: 999 - i))
        assert examples and all(len(i) <= 64 and len(t) <= 20 for i, t in examples)
    with pytest.raises(ValueError, match="needs targets_length >= 14"):
        Objective("span_corruption", inputs_length=64, targets_length=10).check_lengths()


def test_packer_segments_positions_and_shifted_inputs():
    packer = Packer(rows=2, inputs_length=8, targets_length=6, pack=True)
    examples = [([5, 6, 1], [7, 1]), ([8, 1], [9, 10, 1]), ([11, 12, 13, 1], [14, 1])]
    for inputs, targets in examples:
        assert packer.add(np.array(inputs), np.array(targets))
    assert not packer.add(np.array([1] * 8), np.array([1]))  # both rows too full
    b = packer.batch
    np.testing.assert_array_equal(b["encoder_input_tokens"][0], [5, 6, 1, 8, 1, 0, 0, 0])
    np.testing.assert_array_equal(b["encoder_segment_ids"][0], [1, 1, 1, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(b["encoder_positions"][0], [0, 1, 2, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(b["decoder_target_tokens"][0], [7, 1, 9, 10, 1, 0])
    np.testing.assert_array_equal(b["decoder_input_tokens"][0], [0, 7, 0, 9, 10, 0])
    np.testing.assert_array_equal(b["decoder_segment_ids"][0], [1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(b["decoder_positions"][0], [0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(b["encoder_input_tokens"][1], [11, 12, 13, 1, 0, 0, 0, 0])
    unpacked = Packer(rows=3, inputs_length=8, targets_length=6, pack=False)
    for inputs, targets in examples:
        unpacked.add(np.array(inputs), np.array(targets))
    assert unpacked.batch["encoder_segment_ids"].max() == 1


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "spm.model")
    return tokenizer.train(corpus.documents(0, 500), 300, 20, path)


def test_tokenizer_ids_and_round_trip(vocab, tmp_path):
    assert vocab.processor.pad_id() == 0 and vocab.processor.eos_id() == 1
    assert vocab.sentinel(0) == vocab.size - 1 and vocab.sentinel(19) == vocab.size - 20
    text = corpus.document(0, 7)
    assert vocab.decode(vocab.encode(text)) == text
    # Fine-tuning text: truncated before EOS, so it always ends in EOS.
    tokens = vocab.encode(text)
    np.testing.assert_array_equal(vocab.encode_with_eos(text, 6), list(tokens[:5]) + [1])
    np.testing.assert_array_equal(vocab.encode_with_eos(text, 999), list(tokens) + [1])
    with pytest.raises(FileNotFoundError, match="tokenizer.path '/nope' does not exist"):
        tokenizer.load("/nope", 100)


def _pipeline(vocab, state=None, shards=(0,), num_shards=1):
    cfg = DataConfig(embedded_documents=300, inputs_length=32, targets_length=12, seed=1)
    obj = Objective("span_corruption", 32, 12)
    return Pipeline(cfg, vocab, obj, "train", 4, list(shards), num_shards, state=state)


def test_pipeline_resumes_exactly(vocab):
    straight = _pipeline(vocab)
    batches = [next(straight) for _ in range(60)]  # > one epoch of 300 documents
    first = _pipeline(vocab)
    for _ in range(25):
        next(first)
    resumed = _pipeline(vocab, state=first.state())
    for expected in batches[25:]:
        got = next(resumed)
        for k in FEATURES:
            np.testing.assert_array_equal(got[k], expected[k])
    assert {tuple(sorted(b)) for b in batches} == {tuple(sorted(FEATURES))}


def test_shards_compose_the_same_global_batch(vocab):
    both = next(_pipeline(vocab, shards=(0, 1), num_shards=2))
    host0 = next(_pipeline(vocab, shards=(0,), num_shards=2))
    host1 = next(_pipeline(vocab, shards=(1,), num_shards=2))
    for k in FEATURES:
        np.testing.assert_array_equal(both[k], np.concatenate([host0[k], host1[k]]))
    assert not np.array_equal(host0["encoder_input_tokens"], host1["encoder_input_tokens"])


def test_text_files_and_tfds_sources(vocab, tmp_path, mock_tfds):
    from moejax.data.sources import make_source

    path = tmp_path / "docs.txt"
    path.write_text("\n".join(corpus.documents(5, 10)) + "\n\n")
    cfg = DataConfig(source="text", train_files=str(path))
    assert len(list(make_source(cfg, "train", 0, 1).iterate(0, 0))) == 10
    with pytest.raises(FileNotFoundError, match="data.eval_files '' matches no files"):
        make_source(cfg, "eval", 0, 1)
    with mock_tfds(12):
        cfg = dataclasses.replace(cfg, source="tfds", tfds_name="c4/en")
        docs = list(make_source(cfg, "train", 1, 2).iterate(2, 0))
    assert [i for i, _ in docs][:3] == [2, 3, 4] and all(isinstance(t, str) for _, t in docs)


class _Words:
    """Documents 0..n-1; `long` ones encode to 40 tokens, the rest to 1."""

    def __init__(self, n, long=()):
        self.n, self.long = n, set(long)

    def iterate(self, start, epoch):
        yield from ((i, "long" if i in self.long else "w") for i in range(start, self.n))


class _Vocab:
    def encode(self, text):
        return np.arange(3, 43 if text == "long" else 4, dtype=np.int32)

    def sentinel(self, i):
        return 100 + i


@pytest.mark.parametrize("name", ["span_corruption", "prefix_lm"])
def test_an_epoch_without_an_example_is_an_error_not_a_hang(name):
    """Every document shorter than the objective needs: the train stream
    used to loop over epochs for ever (SIGTERM could not stop it)."""
    stream = examples(_Words(5), _Vocab(), Objective(name, 16, 16), 0, Position(), repeat=True,
                      what="data.source='text' (train split)")
    with pytest.raises(ValueError, match=rf"^data.source='text' \(train split\) gave no {name} "
                                         r"example in a whole epoch: every document is shorter "
                                         r"than the 2 tokens it needs after tokenization$"):
        next(stream)


def test_a_resumed_partial_epoch_without_examples_is_not_an_error():
    """Resumed at the last, too short, document: that partial epoch gives
    nothing, the next whole one does."""
    stream = examples(_Words(5, long=[0]), _Vocab(), Objective("span_corruption", 16, 16), 0,
                      Position(epoch=0, document=4), repeat=True)
    position, _, _ = next(stream)
    assert (position.epoch, position.document) == (1, 0)
