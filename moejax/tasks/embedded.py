"""An offline classification task on the embedded corpus.

`embedded_topics`: the first sentence of a generated document in, its topic
out ("topic sentence: The salty captain anchors near ..." -> "sea"). It
ships with the package, so fine-tuning and decoding evaluation run without
downloads; chance is 1/8. Its splits are further draws of the generator
with seeds the pretraining corpus does not use.
"""
from __future__ import annotations

from moejax.data.corpus import TOPICS, topic_document
from moejax.tasks.base import classification

TOPIC_NAMES = tuple(sorted(TOPICS))
SPLITS = {"train": (2_000_029, 4000), "validation": (3_000_017, 400), "test": (4_000_037, 400)}


def load(split: str, data_dir: str = "") -> list[dict]:
    del data_dir  # generated, not read
    if split not in SPLITS:
        raise ValueError(f"embedded_topics has splits {sorted(SPLITS)}, got {split!r}")
    seed, count = SPLITS[split]
    examples = []
    for i in range(count):
        topic, text = topic_document(seed, i)
        examples.append({"idx": i, "sentence": text.split(". ")[0] + ".",
                         "label": TOPIC_NAMES.index(topic)})
    return examples


classification("embedded_topics", "embedded", load, lambda ex: f"topic sentence: {ex['sentence']}",
               TOPIC_NAMES, ("accuracy", "macro_f1"), "TOPICS", submit="name")
