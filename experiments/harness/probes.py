"""Probes of a trained tiny T5: routing NMI against the corpus's domains and
recall of its table (answers masked alone), on held-out documents."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from sklearn.metrics import normalized_mutual_info_score

from moejax.data.pipeline import shift_right
from moejax.data.sources import held_out_documents
from moejax.layers import MOE_COLLECTION


def encoder_layers(row: dict, metric: str) -> list:
    """`metric` of every encoder MoE layer from a run's last evaluation row."""
    return [v for k, v in sorted(row.items())
            if k.startswith("eval_encoder/") and k.endswith("/" + metric)]


def _trained(cfg, workdir: str):
    """(vocabulary, variables, model) of the run `cfg` trained in `workdir`."""
    from moejax.data import tokenizer as tok
    from moejax.models.t5 import Transformer, abstract_params, as_variables
    from moejax.train.init import load_params

    vocab = tok.load(os.path.join(workdir, "tokenizer", "spm.model"), cfg.tokenizer.extra_ids)
    return vocab, as_variables(load_params(workdir, abstract_params(cfg.model))), \
        Transformer(cfg.model)


def t5_routing_nmi(cfg, workdir: str, documents: int = 256) -> list[float]:
    """NMI between a held-out document's domain and the expert its tokens
    choose first (argmax of the router logits), per encoder MoE layer, for the
    model trained in `workdir` on a testbed_config `cfg`: the language
    analogue of the synthetic task's cluster/expert NMI. Evaluated on held-out
    documents (the eval stream) truncated to the input length."""
    from moejax.data import knowledge
    from moejax.models.t5 import Transformer

    d = cfg.data
    vocab, variables, model = _trained(cfg, workdir)
    docs = held_out_documents(cfg.data, documents)
    tokens = vocab.encode_rows([doc.text for doc in docs], d.inputs_length)
    _, state = model.apply(variables, jnp.asarray(tokens), method=Transformer.encode,
                           capture_intermediates=lambda m, name: name == "router_logits",
                           mutable=["intermediates", MOE_COLLECTION])
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    domain = np.repeat([list(knowledge.DOMAINS).index(doc.domain) for doc in docs],
                       d.inputs_length)
    real = tokens.reshape(-1) > 0
    out = []
    for key in sorted(k for k in flat if k.endswith("router_logits")):
        chosen = np.asarray(jnp.argmax(flat[key][0], -1)).reshape(-1)
        out.append(float(normalized_mutual_info_score(domain[real], chosen[real])))
    return out


def cloze_batch(vocab, docs, inputs_length: int, targets_length: int):
    """Span-corruption examples that mask one answer each: per cloze triple
    of each document in `docs` (knowledge.Document: one per sentence;
    markov.Walk: one per word after the first two), inputs 'before
    <extra_id_0> after' and targets '<extra_id_0> answer <extra_id_1>', the
    format the model was trained on. Returns (encoder inputs [N, L],
    decoder inputs [N, T], targets [N, T], answer-token weights [N, T]);
    sentences whose answer falls past the input length are left out."""
    from moejax.data.objectives import EOS_ID

    rows = []
    for doc in docs:
        for before, answer, after in doc.cloze():
            head, ids = vocab.encode(before), vocab.encode(answer)
            if len(head) + 1 >= inputs_length or len(ids) + 2 > targets_length:
                continue
            x = np.concatenate([head, [vocab.sentinel(0)], vocab.encode(after), [EOS_ID]])
            y = np.concatenate([[vocab.sentinel(0)], ids, [vocab.sentinel(1), EOS_ID]])
            rows.append((x[:inputs_length], y, len(ids)))
    enc = np.zeros((len(rows), inputs_length), np.int32)
    tgt = np.zeros((len(rows), targets_length), np.int32)
    weights = np.zeros((len(rows), targets_length), np.float32)
    for r, (x, y, n) in enumerate(rows):
        enc[r, :len(x)], tgt[r, :len(y)], weights[r, 1:1 + n] = x, y, 1
    return enc, shift_right(tgt), tgt, weights


def t5_fact_recall(cfg, workdir: str, documents: int = 256) -> dict:
    """How much of its corpus's table the model trained in `workdir` recalls:
    each answer word of `documents` held-out documents masked alone
    (`cloze_batch`; knowledge: a fact's value or partner, chance 1 in 16;
    markov: every word after the first two, which the chain draws from
    the two before it, at most ~0.75 for a model that knows the table and
    reads one side), 'accuracy' the fraction predicted exactly (every token
    the argmax, teacher-forced) and 'cross_entropy' the mean over answers
    of their summed token cross-entropy (nats). On the knowledge corpus the
    eval loss mixes facts with copied names and template words; this
    isolates what was memorised."""
    vocab, variables, model = _trained(cfg, workdir)
    enc, dec, tgt, weights = cloze_batch(vocab, held_out_documents(cfg.data, documents),
                                         cfg.data.inputs_length, cfg.data.targets_length)
    logits = model.apply(variables, jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tgt)))
    hit = np.asarray(jnp.argmax(logits, -1)) == tgt
    return {"accuracy": float(np.where(weights > 0, hit, True).all(1).mean()),
            "cross_entropy": float((ce * weights).sum(1).mean()), "answers": len(enc)}

