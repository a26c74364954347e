"""The knowledge corpus: a fixed knowledge base, restated consistently in
every document, with per-domain vocabularies and one- and two-hop facts."""
import re

import numpy as np
import pytest
from corpus_util import held_out_split

from moejax.data import knowledge
from moejax.train.config import DataConfig

ENTITIES = 16
ONE_HOP = re.compile(r"the (\w+) of (\w+) is (\w+)\.")
TWO_HOP = re.compile(r"the (\w+) of the partner of (\w+) is (\w+)\.")


def facts_in(text):
    """(entity, relation, value, hops) of the sentences with the plainest
    templates, parsed back from the text."""
    out = [(e, r, v, 2) for r, e, v in TWO_HOP.findall(text)]
    plain = TWO_HOP.sub("", text)
    out += [(e, r, v, 1) for r, e, v in ONE_HOP.findall(plain) if r != "partner"]
    return out


def test_every_document_agrees_with_one_knowledge_base():
    kb = knowledge.knowledge_base(5, ENTITIES)
    assert kb.num_facts == 8 * ENTITIES * 5
    index = {name: (d, i) for d, names in enumerate(kb.entities) for i, name in enumerate(names)}
    value = {(d, r, j): w for d in range(8) for r in range(4)
             for j, w in enumerate(kb.values[d][r])}
    seen = {1: 0, 2: 0}
    for doc_seed in (0, 1_000_003):  # training and held-out documents
        for i in range(300):
            doc = knowledge.knowledge_document(5, ENTITIES, doc_seed, i)
            assert 3 <= len(doc.hops) <= 6 and set(doc.hops) <= {1, 2}
            for entity, rel, val, hops in facts_in(doc.text):
                d, e = index[entity]
                assert kb.domains[d] == doc.domain
                r = knowledge.RELATIONS.index(rel)
                holder = e if hops == 1 else kb.partner[d, e]
                assert val == value[(d, r, kb.facts[d, holder, r])], (doc.text, entity, rel)
                seen[hops] += 1
    assert seen[1] > 100 and seen[2] > 50
    assert (kb.partner != np.arange(ENTITIES)).all()  # nobody is their own partner


def test_domains_spell_with_disjoint_letters_and_generation_is_deterministic():
    kb = knowledge.knowledge_base(0, ENTITIES)
    letters = [set("".join(kb.entities[d]) + "".join(w for r in kb.values[d] for w in r))
               for d in range(8)]
    for d, own in enumerate(letters):
        consonants = set(knowledge.DOMAINS[kb.domains[d]][0])
        assert own & set("bcdfghjklmnpqrstvwxz") <= consonants
    words = [w for d in range(8)
             for w in kb.entities[d] + tuple(v for r in kb.values[d] for v in r)]
    assert len(words) == len(set(words))  # no word names two things
    doc = knowledge.knowledge_document
    assert doc(0, ENTITIES, 3, 7) == doc(0, ENTITIES, 3, 7)
    assert knowledge.knowledge_base(1, ENTITIES).facts.tolist() != kb.facts.tolist()


def test_knowledge_source_holds_out_documents_not_facts():
    held_out = held_out_split("knowledge", knowledge_entities=ENTITIES)
    kb = knowledge.knowledge_base(2, ENTITIES)
    names = {n for names in kb.entities for n in names}
    assert all(any(n in text.split() or n + "'s" in text for n in names) for text in held_out)
    for bad in (1, knowledge.MAX_ENTITIES + 1):
        with pytest.raises(ValueError, match=rf"entities must be in \[2, 900\].*got {bad}"):
            DataConfig(source="knowledge", knowledge_entities=bad)


def test_largest_knowledge_base_has_distinct_names():
    """At MAX_ENTITIES the name space of the 10-syllable domains is nearly
    full: the draw still ends, with no name used twice."""
    kb = knowledge.knowledge_base(3, knowledge.MAX_ENTITIES)
    names = [n for d in kb.entities for n in d]
    assert len(names) == len(set(names)) == 8 * knowledge.MAX_ENTITIES
    with pytest.raises(ValueError, match="must be in"):
        knowledge.knowledge_base(3, knowledge.MAX_ENTITIES + 1)


def test_cloze_answers_are_the_knowledge_base_facts():
    """Each sentence's answer, re-derived from the knowledge base by reading
    the sentence (its entity, relation word and whether it names the
    partner), is the one `cloze` masks, and the split restores the text."""
    kb = knowledge.knowledge_base(4, ENTITIES)
    index = {n: (d, i) for d, names in enumerate(kb.entities) for i, n in enumerate(names)}
    for n in range(40):
        doc = knowledge.knowledge_document(4, ENTITIES, 9, n)
        for (before, answer, after), sentence in zip(doc.cloze(), doc.sentences):
            assert f"{before} {answer} {after}".replace(" ", "") == doc.text.replace(" ", "")
            words = sentence.rstrip(".").replace(":", "").replace("'s", " partner").split()
            d, i = next(index[w] for w in words if w in index and w != answer)
            relation = [r for r, name in enumerate(knowledge.RELATIONS) if name in words]
            if not relation:  # "partner of X is Y", "X works with Y", "X and Y are partners"
                want = kb.entities[d][kb.partner[d, i]]
            else:  # "the partner of X" / "X's partner": the partner's value
                holder = kb.partner[d, i] if "partner" in words else i
                want = kb.values[d][relation[0]][kb.facts[d, holder, relation[0]]]
            assert answer == want, sentence
