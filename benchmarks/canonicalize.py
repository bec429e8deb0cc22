"""Throughput of hashtag extraction and WordNet canonicalisation on one core (no per-hashtag WordNet query).

    .venv/bin/python benchmarks/canonicalize.py [--captions 200000]

Captions are drawn from the synthetic generator's vocabulary mix: in-vocabulary lemma spellings,
off-vocabulary tags, emoji and filler words. Prints hashtags/s for extraction + canonicalisation from captions, and for canonicalisation alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsp.corpus.synthetic import caption, choose_concepts
from wsp.hashtags.parse import extract_hashtags
from wsp.hashtags.vocab import build_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    args = parser.parse_args()
    vocabulary = build_vocabulary("in1k")
    concepts = choose_concepts(vocabulary, 24, 1.0, seed=0)
    rng = np.random.default_rng(0)
    captions = [caption([concepts[i % 24]], concepts, rng, 0.2, 0.1) for i in range(args.captions)]

    start = time.perf_counter()
    hashtags = labelled = 0
    for text in captions:
        tags = extract_hashtags(text)
        hashtags += len(tags)
        labelled += bool(vocabulary.labels_of(tags))
    seconds = time.perf_counter() - start
    print(f"extraction + canonicalisation: {hashtags / seconds:,.0f} hashtags/s, "
          f"{args.captions / seconds:,.0f} captions/s on one core ({labelled} of {args.captions} labelled)")  # fmt: skip

    tag_lists = [extract_hashtags(text) for text in captions]
    start = time.perf_counter()
    for tags in tag_lists:
        vocabulary.labels_of(tags)
    seconds = time.perf_counter() - start
    print(f"canonicalisation of extracted hashtags: {hashtags / seconds:,.0f} hashtags/s on one core")


if __name__ == "__main__":
    main()
