"""The embedded corpus: synthetic English-like documents generated offline.

The default run must pretrain without downloads, so the package generates
its own text. Each document picks a topic and writes sentences from that
topic's words with a fixed grammar, so a model can learn both syntax (word
order, agreement of the template) and topic co-occurrence (which words can
fill a corrupted span). Generation is deterministic in (seed, index).
"""
from __future__ import annotations

import functools

import numpy as np

from moejax.data import seeded_rng
from moejax.data.sources import generated, register_source, validate_generated

TOPICS = {
    "sea": ("sailor ship harbor wave captain island anchor gull storm tide",
            "sails drifts anchors rows steers floats dives waits",
            "salty blue calm rough distant sandy foggy windy"),
    "forest": ("fox owl oak deer hunter trail moss river wolf cabin",
               "wanders hides climbs hunts rests grows listens sleeps",
               "green quiet ancient wild dark tall mossy hidden"),
    "city": ("driver train tower street market lawyer cafe bridge crowd taxi",
             "rushes sells builds waits crosses opens closes shouts",
             "busy noisy bright crowded modern narrow grey late"),
    "kitchen": ("cook oven bread soup knife garlic apron pepper spoon kettle",
                "bakes stirs chops boils tastes slices pours heats",
                "warm fresh spicy sweet crisp golden hot bitter"),
    "space": ("rocket planet comet pilot orbit moon station star probe crater",
              "launches orbits lands glows spins drifts scans signals",
              "silent frozen distant red vast bright lonely cold"),
    "school": ("teacher pupil lesson book exam chalk desk library poem clock",
               "reads writes learns teaches studies answers draws counts",
               "clever tired young strict careful curious early patient"),
    "farm": ("farmer cow barn tractor field hen goat fence harvest orchard",
             "plows feeds milks plants gathers sleeps wakes carries",
             "muddy golden rural dusty green early heavy slow"),
    "music": ("singer drum violin choir piano melody stage guitar band song",
              "plays sings tunes hums performs records dances claps",
              "loud soft gentle rhythmic famous sharp slow joyful"),
}
_FUNCTION = ("the", "a", "this", "every", "one")
_CONNECT = ("and then", "while", "because", "so", "but")


def _sentence(rng: np.random.RandomState, nouns, verbs, adjs) -> str:
    pick = lambda words: words[rng.randint(len(words))]
    words = [pick(_FUNCTION), pick(adjs), pick(nouns), pick(verbs), "near", pick(_FUNCTION),
             pick(adjs), pick(nouns)]
    if rng.rand() < 0.5:
        words += [pick(_CONNECT), pick(_FUNCTION), pick(nouns), pick(verbs)]
    return " ".join(words) + "."


def topic_document(seed: int, index: int) -> tuple[str, str]:
    """(topic, text) of document `index` of the corpus generated with
    `seed`: 2-8 sentences on one topic."""
    rng = seeded_rng(seed, index)
    names = sorted(TOPICS)
    topic = names[rng.randint(len(names))]
    nouns, verbs, adjs = (s.split() for s in TOPICS[topic])
    sentences = [_sentence(rng, nouns, verbs, adjs) for _ in range(rng.randint(2, 9))]
    return topic, " ".join(s[0].upper() + s[1:] for s in sentences)


def document(seed: int, index: int) -> str:
    return topic_document(seed, index)[1]


@functools.lru_cache(maxsize=4)
def documents(seed: int, count: int) -> tuple[str, ...]:
    """The first `count` documents, generated once per process (the
    tokenizer, the training stream and evaluation all read them)."""
    return tuple(document(seed, i) for i in range(count))


register_source("embedded", generated(lambda cfg, seed, count: documents(seed, count)),
                validate_generated)
