"""Decoding: cached steps equal full recomputation; beam search is exact when wide."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_util import init, run, tiny_config, tokens

from moejax.models.decoding import generate, length_penalty

EOS = 1


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config(vocab_size=24)
    enc = tokens(0, (3, 7), 24, pad_from=[7, 5, 6])
    model, params = init(cfg, seed=1)
    return model, params, enc


def uncached_greedy(model, params, enc, max_length):
    """Reference: rerun the full teacher-forced decoder on the prefix each step."""
    out = np.zeros((enc.shape[0], max_length), np.int32)
    done = np.zeros(enc.shape[0], bool)
    for t in range(max_length):
        shifted = np.concatenate([np.zeros((enc.shape[0], 1), np.int32), out], 1)
        dec = jnp.asarray(shifted[:, :max_length])
        logits = np.asarray(run(model, params, enc, dec))[:, t]
        nxt = np.where(done, 0, logits.argmax(-1))
        out[:, t] = nxt
        done |= nxt == EOS
    return out


def test_cached_greedy_equals_uncached(setup):
    model, params, enc = setup
    ours = generate(model, params, enc, max_length=6, eos_id=EOS)
    np.testing.assert_array_equal(ours.tokens, uncached_greedy(model, params, enc, 6))


def test_sampling_limits_reduce_to_greedy(setup):
    model, params, enc = setup
    greedy = generate(model, params, enc, max_length=6).tokens
    key = jax.random.PRNGKey(3)
    top1 = generate(model, params, enc, max_length=6, method="sample", top_k=1, rng=key)
    cold = generate(model, params, enc, max_length=6, method="sample", temperature=1e-4, rng=key)
    np.testing.assert_array_equal(top1.tokens, greedy)
    np.testing.assert_array_equal(cold.tokens, greedy)
    hot = [generate(model, params, enc, max_length=6, method="sample", temperature=5.0,
                    rng=jax.random.PRNGKey(s)).tokens for s in range(2)]
    assert not np.array_equal(hot[0], hot[1])


def sequence_logp(model, params, enc, seq):
    """Sum of log-probs of `seq` [B, L] under teacher forcing (up to and including EOS)."""
    dec = jnp.concatenate([jnp.zeros((seq.shape[0], 1), jnp.int32), seq[:, :-1]], 1)
    logp = jax.nn.log_softmax(run(model, params, enc, dec))
    per = np.take_along_axis(np.asarray(logp), np.asarray(seq)[..., None], -1)[..., 0]
    alive = np.cumsum(np.cumsum(np.asarray(seq) == EOS, 1), 1) <= 1
    return (per * alive).sum(1), alive.sum(1)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_search_is_exhaustive_search(setup, alpha):
    # With beams >= every prefix of length < max_length, beam search keeps
    # every hypothesis, so it must find the best-scoring sequence overall.
    model, params, enc = setup
    vocab, max_length = 24, 3
    enc = enc[:2]
    result = generate(model, params, enc, max_length=max_length, method="beam",
                      num_beams=vocab ** 2, alpha=alpha, eos_id=EOS)
    candidates = jnp.asarray(list(itertools.product(range(vocab), repeat=max_length)), jnp.int32)
    for row in range(enc.shape[0]):
        # Sequences that continue after EOS are the same hypothesis as the
        # EOS-terminated prefix; keep one representative (zeros after EOS).
        seqs = np.asarray(candidates)
        after = np.cumsum(np.cumsum(seqs == EOS, 1), 1) > 1
        seqs = np.unique(np.where(after, 0, seqs), axis=0)
        logp, length = sequence_logp(model, params, jnp.repeat(enc[row:row + 1], len(seqs), 0),
                                     jnp.asarray(seqs))
        score = logp / length_penalty(length, alpha)
        best = seqs[np.argmax(score)]
        np.testing.assert_array_equal(result.tokens[row], best)
        np.testing.assert_allclose(result.scores[row], score.max(), rtol=1e-4)


def test_beam_of_one_is_greedy(setup):
    model, params, enc = setup
    beam = generate(model, params, enc, max_length=5, method="beam", num_beams=1, alpha=0.0)
    np.testing.assert_array_equal(beam.tokens, generate(model, params, enc, max_length=5).tokens)


def test_tokens_after_eos_are_padding(setup):
    model, params, enc = setup
    # Make EOS very likely after the first step by choosing the EOS id to be
    # each row's second greedy token.
    greedy = np.asarray(generate(model, params, enc, max_length=6).tokens)
    eos = int(greedy[0, 1])
    out = np.asarray(generate(model, params, enc, max_length=6, eos_id=eos).tokens)
    assert out[0, 1] == eos and (out[0, 2:] == 0).all()


def test_bad_arguments(setup):
    model, params, enc = setup
    with pytest.raises(ValueError, match="method must be one of"):
        generate(model, params, enc, max_length=3, method="nucleus")
    with pytest.raises(ValueError, match="needs rng"):
        generate(model, params, enc, max_length=3, method="sample")
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        generate(model, params, enc, max_length=0)
