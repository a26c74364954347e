"""The knowledge corpus: a generated knowledge base, rendered as documents.

The topic corpus (`moejax.data.corpus`) has nothing to store past its
grammar: every word is drawn uniformly from a ~30-word topic list, so a
dense tiny model already knows all there is and experts cannot pay off.
This corpus is built so that parameters do pay, and a router can tell
where to send a token:

(a) capacity: `entities` entities per domain, each with four attributes and
    a partner (another entity of its domain): 8 * entities * 5 facts to
    memorise (2,560 at the default 64), far more than the dense tiny model
    learns in a CPU budget. Each fact is a sentence rendered from one of
    several templates, so memorising surface strings is not enough.
(b) structure: each of the 8 domains spells its entities and values with
    its own syllables, so which expert should hold a fact is visible in
    the tokens (a learned router can specialise experts by domain).
(c) graded difficulty: a sentence states a one-hop fact (an entity's
    attribute or partner) or a two-hop fact (an attribute of its
    partner), which needs a composition of two lookups. Entities are drawn
    with Zipf(0.5) weights, so frequent facts are learned early and the
    tail keeps rewarding capacity.

A document states 3-6 distinct facts about one entity, so once its name
has appeared it can be copied. Copied names and template words are most of
the masked tokens, so the eval loss is mostly not about facts;
`Document.cloze` masks one answer word at a time to measure recall.

The knowledge base depends only on `kb_seed`; documents on (doc_seed,
index), so the evaluation documents (another doc_seed) restate the same
facts in fresh sentences: what a model recalls of them it memorised.
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from moejax.data import seeded_rng
from moejax.data.sources import EVAL_SEED_OFFSET, generated, register_source, validate_generated

# Each domain spells its words from its own consonants and vowels.
DOMAINS = {
    "sea": ("bdgmn", "aou"), "forest": ("fhlrw", "eiy"), "city": ("ktpsz", "ae"),
    "kitchen": ("chjqv", "ou"), "space": ("xzkrn", "iy"), "school": ("lmpst", "eo"),
    "farm": ("bgrvw", "au"), "music": ("dfhnt", "ie"),
}
RELATIONS = ("home", "tool", "color", "food")
VALUES_PER_RELATION = 16
_ONE_HOP = ("the {rel} of {e} is {v}.", "{e} has {v} as its {rel}.", "{e} keeps {v} for {rel}.",
            "ask {e} about its {rel} and you hear {v}.", "everyone knows the {rel} of {e}: {v}.")
_PARTNER = ("the partner of {e} is {v}.", "{e} works with {v}.", "{e} and {v} are partners.")
_TWO_HOP = ("the {rel} of the partner of {e} is {v}.", "the partner of {e} has {v} as its {rel}.",
            "{e}'s partner keeps {v} for {rel}.")
TWO_HOP_FRACTION = 0.3
# Entity names are 3 syllables of their domain's letters: 'city', 'kitchen',
# 'space' and 'farm' have 10 syllables, so 1000 names, and 'farm' shares
# some of them with 'sea'. 900 leaves every seed room to draw distinct names.
MAX_ENTITIES = 900


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    """entities[d][i]: name of entity i of domain d; values[d][r][j]: value
    word j of relation r; facts[d][i][r]: the value index entity i holds for
    relation r; partner[d][i]: its partner's index; weight: Zipf draw
    probabilities of entities within a domain."""

    domains: tuple[str, ...]
    entities: tuple[tuple[str, ...], ...]
    values: tuple[tuple[tuple[str, ...], ...], ...]
    facts: np.ndarray  # int [D, N, R]
    partner: np.ndarray  # int [D, N]
    weight: np.ndarray  # float [N]

    @property
    def num_facts(self) -> int:
        return self.facts.size + self.partner.size


def domain_words(rng: np.random.RandomState, consonants: str, vowels: str, count: int,
                 syllables: int, taken: set) -> tuple[str, ...]:
    """`count` distinct words of `syllables` consonant-vowel syllables, none
    in `taken` (which collects them), so domains never share a word."""
    out = []
    while len(out) < count:
        word = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels))
                       for _ in range(syllables))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return tuple(out)


@functools.lru_cache(maxsize=4)
def knowledge_base(kb_seed: int, entities: int) -> KnowledgeBase:
    """The knowledge base of `kb_seed` with `entities` entities per domain."""
    if not 2 <= entities <= MAX_ENTITIES:
        raise ValueError(f"knowledge entities per domain must be in [2, {MAX_ENTITIES}], "
                         f"got {entities}")
    rng = seeded_rng(kb_seed, 7919)
    names = tuple(DOMAINS)
    taken: set = set()
    ents, vals = [], []
    for name in names:
        consonants, vowels = DOMAINS[name]
        ents.append(domain_words(rng, consonants, vowels, entities, 3, taken))
        vals.append(tuple(domain_words(rng, consonants, vowels, VALUES_PER_RELATION, 2, taken)
                          for _ in RELATIONS))
    d = len(names)
    facts = rng.randint(VALUES_PER_RELATION, size=(d, entities, len(RELATIONS)))
    # Partner: a random other entity of the same domain (i + shift mod N, shift != 0).
    partner = (np.arange(entities)[None] + rng.randint(1, entities, size=(d, entities))) % entities
    weight = 1.0 / np.sqrt(np.arange(1, entities + 1))
    return KnowledgeBase(names, tuple(ents), tuple(vals), facts, partner, weight / weight.sum())


# The fact types a sentence can state: (relation, hops); relation
# len(RELATIONS) is the partner. Drawn without replacement within a
# document (no fact is stated twice, so none can be copied from its context),
# TWO_HOP_FRACTION of the draw weight on two-hop facts.
FACT_TYPES = (tuple((r, 1) for r in range(len(RELATIONS) + 1))
              + tuple((r, 2) for r in range(len(RELATIONS))))
_FACT_WEIGHTS = np.array([(1 - TWO_HOP_FRACTION) / (len(RELATIONS) + 1) if h == 1
                          else TWO_HOP_FRACTION / len(RELATIONS) for _, h in FACT_TYPES])
_FACT_WEIGHTS /= _FACT_WEIGHTS.sum()  # exactly a distribution, as rng.choice requires


def _sentence(kb: KnowledgeBase, rng: np.random.RandomState, d: int, i: int,
              fact: int) -> tuple[str, str]:
    """(sentence, answer): fact type `fact` about entity i of domain d in a
    random template, and the word that states the fact (a value, or the
    partner's name)."""
    e = kb.entities[d][i]
    pick = lambda templates: templates[rng.randint(len(templates))]
    r, hops = FACT_TYPES[fact]
    if hops == 2:
        v = kb.values[d][r][kb.facts[d, kb.partner[d, i], r]]
        return pick(_TWO_HOP).format(e=e, rel=RELATIONS[r], v=v), v
    if r == len(RELATIONS):
        v = kb.entities[d][kb.partner[d, i]]
        return pick(_PARTNER).format(e=e, v=v), v
    v = kb.values[d][r][kb.facts[d, i, r]]
    return pick(_ONE_HOP).format(e=e, rel=RELATIONS[r], v=v), v


@dataclasses.dataclass(frozen=True)
class Document:
    domain: str
    sentences: tuple[str, ...]
    hops: tuple[int, ...]  # per sentence: 1 (one lookup) or 2 (a composition)
    answers: tuple[str, ...]  # per sentence: the word that states its fact

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def cloze(self) -> list[tuple[str, str, str]]:
        """(before, answer, after) per sentence: the text split around the
        word that states the sentence's fact. No fact is stated twice in a
        document, so the answer can be predicted from the knowledge base
        the model memorised, not copied (except where another fact happens
        to share its value word)."""
        out = []
        for j, (sentence, answer) in enumerate(zip(self.sentences, self.answers)):
            head, tail = re.split(rf"\b{answer}\b", sentence, maxsplit=1)
            out.append((" ".join([*self.sentences[:j], head]).strip(), answer,
                        " ".join([tail, *self.sentences[j + 1:]]).strip()))
        return out


def knowledge_document(kb_seed: int, entities: int, doc_seed: int, index: int) -> Document:
    """Document `index` of stream `doc_seed`: 3-6 distinct facts about one
    entity (Zipf-drawn) of one domain."""
    kb = knowledge_base(kb_seed, entities)
    rng = seeded_rng(doc_seed, index, 31)
    d = rng.randint(len(kb.domains))
    i = rng.choice(len(kb.weight), p=kb.weight)
    facts = rng.choice(len(FACT_TYPES), size=rng.randint(3, 7), replace=False,
                       p=_FACT_WEIGHTS)
    sentences, answers = zip(*(_sentence(kb, rng, d, i, f) for f in facts))
    return Document(kb.domains[d], sentences, tuple(FACT_TYPES[f][1] for f in facts), answers)


@functools.lru_cache(maxsize=4)
def documents(kb_seed: int, entities: int, doc_seed: int, count: int) -> tuple[str, ...]:
    """The texts of the first `count` documents, generated once per process."""
    return tuple(knowledge_document(kb_seed, entities, doc_seed, i).text for i in range(count))


def _validate(cfg) -> None:
    validate_generated(cfg)
    if not 2 <= cfg.knowledge_entities <= MAX_ENTITIES:
        raise ValueError(f"knowledge_entities must be in [2, {MAX_ENTITIES}] (names are 3 "
                         f"syllables of a domain's letters), got {cfg.knowledge_entities}")


# One knowledge base (cfg.seed); held-out documents restate it.
register_source(
    "knowledge", generated(lambda cfg, seed, count: documents(
        cfg.seed, cfg.knowledge_entities, seed, count)), _validate,
    held_out=lambda cfg, count: [knowledge_document(
        cfg.seed, cfg.knowledge_entities, cfg.seed + EVAL_SEED_OFFSET, i) for i in range(count)])
