"""Autoregressive decoding for the encoder-decoder: greedy, temperature sampling, beam search.

Every method runs the decoder one token at a time against the incremental
cache (self-attention keys/values written per step, encoder keys/values
computed once), inside one jit-compiled `lax.while_loop`. Token 0 is the
start token and padding; after a sequence emits `eos_id` it emits 0.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.models.scan import take_rows
from moejax.models.t5 import as_variables

METHODS = ("greedy", "sample", "beam")
NEG = -1e9


class Decoded(NamedTuple):
    tokens: jax.Array  # int32 [B, max_length], 0 after EOS
    scores: jax.Array  # float32 [B]: sum of token log-probs (beam: length-penalised)


def _stepper(model, params, encoded, encoder_tokens, max_length):
    def step(token, position, cache):
        variables = {**as_variables(params), **({"cache": cache} if cache else {})}
        logits, state = model.apply(
            variables, encoded, encoder_tokens, token[:, None], decode=True,
            decode_position=position, max_length=max_length, mutable=["cache"],
            method=model.decode)
        return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), state["cache"]
    return step


@functools.partial(jax.jit, static_argnames=("model", "max_length", "method", "top_k"))
def _sample(model, params, encoder_tokens, rng, temperature, *, max_length, method, eos_id, top_k):
    b = encoder_tokens.shape[0]
    encoded = model.apply(as_variables(params), encoder_tokens, method=model.encode)
    step = _stepper(model, params, encoded, encoder_tokens, max_length)

    def pick(logp, key):
        if method == "greedy":
            return jnp.argmax(logp, -1)
        if top_k is not None:
            kth = jax.lax.top_k(logp, top_k)[0][:, -1:]
            logp = jnp.where(logp < kth, -jnp.inf, logp)
        return jax.random.categorical(key, logp / temperature)

    def advance(t, token, cache, out, score, done, key):
        logp, cache = step(token, t, cache)
        key, sub = jax.random.split(key)
        nxt = jnp.where(done, 0, pick(logp, sub)).astype(jnp.int32)
        score = score + jnp.where(done, 0.0, jnp.take_along_axis(logp, nxt[:, None], 1)[:, 0])
        out = out.at[:, t].set(nxt)
        return nxt, cache, out, score, done | (nxt == eos_id), key

    init = (jnp.zeros((b,), jnp.int32), None, jnp.zeros((b, max_length), jnp.int32),
            jnp.zeros((b,), jnp.float32), jnp.zeros((b,), bool), rng)
    state = (1,) + advance(0, *init)  # the first step creates the cache

    def cond(s):
        return (s[0] < max_length) & ~jnp.all(s[5])

    def body(s):
        return (s[0] + 1,) + advance(*s)

    _, _, _, out, score, _, _ = jax.lax.while_loop(cond, body, state)
    return Decoded(out, score)


def length_penalty(length, alpha):
    """GNMT / T5X: ((5 + length) / 6) ** alpha; alpha = 0 ranks by raw log-prob."""
    return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("model", "max_length", "num_beams"))
def _beam(model, params, encoder_tokens, alpha, *, max_length, num_beams, eos_id):
    b, k = encoder_tokens.shape[0], num_beams
    tokens = jnp.repeat(encoder_tokens, k, axis=0)
    encoded = model.apply(as_variables(params), tokens, method=model.encode)
    step = _stepper(model, params, encoded, tokens, max_length)

    def expand(t, seq, logp_alive, fin_seq, fin_score, cache):
        prev = jnp.take(seq, jnp.maximum(t - 1, 0), axis=2).reshape(-1)
        logp, cache = step(jnp.where(t > 0, prev, 0), t, cache)
        vocab = logp.shape[-1]
        cand = (logp_alive[:, :, None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
        top, idx = jax.lax.top_k(cand, 2 * k)
        beam, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        new_seq = jnp.take_along_axis(seq, beam[:, :, None], 1).at[:, :, t].set(tok)
        is_eos = tok == eos_id
        # Alive: the best k candidates that did not end; at the last step all end.
        last = t == max_length - 1
        alive_score = jnp.where(is_eos, NEG, top)
        a_top, a_idx = jax.lax.top_k(alive_score, k)
        a_seq = jnp.take_along_axis(new_seq, a_idx[:, :, None], 1)
        origin = jnp.take_along_axis(beam, a_idx, 1) + jnp.arange(b)[:, None] * k
        cache = take_rows(cache, origin.reshape(-1))
        # Finished: ended with EOS now (or reached max_length), merged with earlier ones.
        ended = is_eos | last
        f_score = jnp.where(ended & (top > NEG / 2), top / length_penalty(t + 1.0, alpha), NEG)
        all_seq = jnp.concatenate([fin_seq, new_seq], 1)
        all_score = jnp.concatenate([fin_score, f_score], 1)
        f_top, f_idx = jax.lax.top_k(all_score, k)
        fin_seq = jnp.take_along_axis(all_seq, f_idx[:, :, None], 1)
        return a_seq, a_top, fin_seq, f_top, cache

    seq = jnp.zeros((b, k, max_length), jnp.int32)
    # Only beam 0 is live at first, so the k beams do not start as duplicates.
    logp_alive = jnp.where(jnp.arange(k)[None] == 0, 0.0, NEG) * jnp.ones((b, 1))
    fin_seq, fin_score = jnp.zeros_like(seq), jnp.full((b, k), NEG)
    state = (1,) + expand(0, seq, logp_alive, fin_seq, fin_score, None)

    def cond(s):
        t, _, a_logp, _, f_score, _ = s
        # Stop once no live beam can beat the worst kept finished one.
        best_possible = a_logp[:, 0] / length_penalty(float(max_length), alpha)
        return (t < max_length) & ~jnp.all(best_possible < f_score[:, -1])

    def body(s):
        return (s[0] + 1,) + expand(*s)

    _, _, _, fin_seq, fin_score, _ = jax.lax.while_loop(cond, body, state)
    best = fin_seq[:, 0]
    # Zero everything after the first EOS.
    after_eos = jnp.cumsum(jnp.cumsum(best == eos_id, 1), 1) > 1
    return Decoded(jnp.where(after_eos, 0, best), fin_score[:, 0])


def generate(model, params, encoder_input_tokens, *, max_length: int, method: str = "greedy",
             eos_id: int = 1, temperature: float = 1.0, top_k: int | None = None,
             num_beams: int = 4, alpha: float = 0.6, rng=None) -> Decoded:
    """Decodes up to `max_length` tokens for encoder_input_tokens [B, L].
    `params`: the model's params, or its variables ({'params', 'router_state'})
    when a router keeps a selection bias.

    method: 'greedy'; 'sample' (softmax(logits / temperature), optionally
    restricted to the `top_k` most likely tokens; needs `rng`); 'beam'
    (`num_beams` beams, length penalty ((5 + len) / 6) ** alpha).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    if method == "beam":
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        return _beam(model, params, tokens, alpha, max_length=max_length, num_beams=num_beams,
                     eos_id=eos_id)
    if method == "sample":
        if rng is None:
            raise ValueError("method 'sample' needs rng (a jax.random key)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _sample(model, params, tokens, rng, temperature, max_length=max_length, method=method,
                   eos_id=eos_id, top_k=top_k)
