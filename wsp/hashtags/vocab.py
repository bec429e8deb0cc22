"""Canonical hashtag vocabularies: every hashtag that spells a lemma of a vocabulary synset maps to that
synset's label, so #brownbear, #bruin and #ursusarctos all become `n02132136` (brown_bear.n.01).

The matching rule (also in the README): a hashtag matches a lemma when `normalize(hashtag) ==
normalize(lemma)` (NFKC, case-folded, spaces/underscores/hyphens/apostrophes/periods removed). A
normalised form that spells lemmas of several vocabulary synsets is resolved by `ambiguous`:
  - `first_sense` (default): the synset WordNet lists first for that lemma (its most frequent sense);
  - `all`: the hashtag gives every one of those synsets as a label;
  - `drop`: the hashtag is ignored.
The vocabulary is built once; labelling a post is then dict look-ups, never a WordNet query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

from wsp.hashtags.parse import normalize
from wsp.hashtags.wordnet import imagenet1k_wnids, load_wordnet, synset_to_wnid, wnid_to_synset

AMBIGUITY_POLICIES = ("first_sense", "all", "drop")


@dataclass(frozen=True)
class Label:
    id: int
    wnid: str
    name: str  # the synset's first lemma, e.g. brown_bear
    lemmas: tuple[str, ...]


class Vocabulary:
    """Labels (canonical synsets) and the map from normalised hashtag to label ids."""

    def __init__(self, labels: list[Label], hashtag_to_labels: dict[str, tuple[int, ...]]):
        self.labels = labels
        self.hashtag_to_labels = hashtag_to_labels

    def __len__(self) -> int:
        return len(self.labels)

    def labels_of(self, hashtags: Iterable[str]) -> list[int]:
        """Sorted, deduplicated label ids of normalised hashtags; unknown hashtags are ignored."""
        found: list[int] = []
        for ids in map(self.hashtag_to_labels.get, hashtags):
            if ids:
                found += ids
        return sorted(set(found)) if len(found) > 1 else found  # most posts have one label: no set

    @classmethod
    def from_wnids(cls, wnids: Iterable[str], ambiguous: str = "first_sense") -> Vocabulary:
        if ambiguous not in AMBIGUITY_POLICIES:
            raise ValueError(f"ambiguous={ambiguous!r}: must be one of {', '.join(AMBIGUITY_POLICIES)}")
        synsets = [wnid_to_synset(w) for w in dict.fromkeys(wnids)]
        labels = [
            Label(i, synset_to_wnid(s), s.lemma_names()[0], tuple(s.lemma_names()))
            for i, s in enumerate(synsets)
        ]
        candidates: dict[str, dict[int, str]] = {}  # normalised form -> {label id: the lemma spelling it}
        for label in labels:
            for lemma in label.lemmas:
                candidates.setdefault(normalize(lemma), {}).setdefault(label.id, lemma)
        index = {
            form: resolved
            for form, by_label in candidates.items()
            if (resolved := _resolve(by_label, labels, ambiguous))
        }
        return cls(labels, index)

    def restrict(self, label_ids: list[int]) -> Vocabulary:
        """The sub-vocabulary of `label_ids`, renumbered 0..n-1 in that order; other hashtags unmapped."""
        new_id = {old: new for new, old in enumerate(label_ids)}
        labels = [Label(new_id[i], *astuple(self.labels[i])[1:]) for i in label_ids]
        index = {}
        for tag, ids in self.hashtag_to_labels.items():
            if kept := tuple(new_id[i] for i in ids if i in new_id):
                index[tag] = kept
        return Vocabulary(labels, index)

    def to_json(self) -> dict:
        return {
            "labels": [asdict(label) for label in self.labels],
            "hashtags": {tag: list(ids) for tag, ids in sorted(self.hashtag_to_labels.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        labels = [Label(d["id"], d["wnid"], d["name"], tuple(d["lemmas"])) for d in data["labels"]]
        return cls(labels, {tag: tuple(ids) for tag, ids in data["hashtags"].items()})

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_json(json.loads(Path(path).read_text()))


def _resolve(by_label: dict[int, str], labels: list[Label], ambiguous: str) -> tuple[int, ...]:
    if len(by_label) == 1 or ambiguous == "all":
        return tuple(sorted(by_label))
    if ambiguous == "drop":
        return ()
    return (min(by_label, key=lambda i: (_sense_rank(by_label[i], labels[i].wnid), labels[i].wnid)),)


def _sense_rank(lemma: str, wnid: str) -> int:
    """Position of the synset among WordNet's noun senses of `lemma` (0 = most frequent sense)."""
    senses = [synset_to_wnid(s) for s in load_wordnet().synsets(lemma, pos="n")]
    return senses.index(wnid) if wnid in senses else len(senses)


VOCABULARIES = ("in1k", "imagenet_k", "wordnet", "wnids", "hashtags")


def imagenet_k_wnids(imagenet22k_root: str | Path | None = None, classes: int | None = None,
                     list_file: str | Path | None = None, index_cache: str | Path | None = None) -> list[str]:  # fmt: skip
    """The paper's ImageNet-5k/-9k label sets, in label order: the wnid file `list_file` as it is (the
    tree is not read), or the 1,000 IN-1k classes plus the `classes - 1000` other classes with the most
    images in an ImageNet-22k (fall 2011) folder tree `<root>/<wnid>/*.JPEG`, written to a wnid file to
    pin (wsp.data.imagenet22k: the same lists and files as `data=imagenet5k`/`imagenet9k`)."""
    from wsp.data.imagenet22k import CORPUS, class_list

    wnids, _ = class_list(imagenet22k_root, classes, list_file, index_cache, CORPUS, index=False)
    return wnids


def all_noun_wnids() -> list[str]:
    return [synset_to_wnid(s) for s in load_wordnet().all_synsets(pos="n")]


def read_list(path: str | Path) -> list[str]:
    """Non-empty lines of a text file (wnids or hashtags), without comments ('# ' lines: '#tag' is data)."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and line != "#" and not line.startswith("# ")]


def build_vocabulary(name: str, wnids: list[str] | None = None, ambiguous: str = "first_sense",
                     list_file: str | None = None, imagenet22k_root: str | None = None,
                     classes: int | None = None, index_cache: str | None = None) -> Vocabulary:  # fmt: skip
    """A named vocabulary.

    - `in1k`: the 1,000 ImageNet-1k synsets (the paper's ~1.5k hashtags);
    - `imagenet_k`: ImageNet-5k/-9k: the wnids of `list_file` in order, or `classes` of them chosen
      from an ImageNet-22k folder tree (`imagenet_k_wnids`);
    - `wordnet`: every WordNet noun synset (the paper's 17k set is those occurring in the data, and its
      8.5k set the most frequent of them: `corpus.min_count` and `corpus.max_labels` select them);
    - `wnids`: synsets listed in `wnids` or in `list_file` (one wnid per line), e.g. ImageNet-5k/9k;
    - `hashtags`: the hashtags listed in `list_file`, each mapped to the noun synsets it spells.
    """
    if name == "in1k":
        return Vocabulary.from_wnids(imagenet1k_wnids(), ambiguous)
    if name == "imagenet_k":
        if not list_file and not (imagenet22k_root and classes):
            raise ValueError(
                "vocabulary 'imagenet_k' needs corpus.list_file (a wnid file) or corpus.imagenet22k_root "
                "and corpus.classes"
            )
        return Vocabulary.from_wnids(
            imagenet_k_wnids(imagenet22k_root, classes, list_file, index_cache), ambiguous
        )
    if name == "wordnet":
        return Vocabulary.from_wnids(all_noun_wnids(), ambiguous)
    if name == "wnids":
        wnids = list(wnids or []) + (read_list(list_file) if list_file else [])
        if not wnids:
            raise ValueError("vocabulary 'wnids' needs corpus.wnids or corpus.list_file")
        return Vocabulary.from_wnids(wnids, ambiguous)
    if name == "hashtags":
        if not list_file:
            raise ValueError("vocabulary 'hashtags' needs corpus.list_file (one hashtag per line)")
        return hashtag_vocabulary({normalize(tag) for tag in read_list(list_file)}, ambiguous)
    raise ValueError(f"unknown vocabulary {name!r}: valid are {', '.join(VOCABULARIES)}")


def hashtag_vocabulary(hashtags: set[str], ambiguous: str) -> Vocabulary:
    """The noun synsets spelled by `hashtags`, mapping only those hashtags."""
    wordnet = load_wordnet()
    wnids = sorted({
        synset_to_wnid(synset)
        for lemma in wordnet.all_lemma_names(pos="n") if normalize(lemma) in hashtags
        for synset in wordnet.synsets(lemma, pos="n")
    })  # fmt: skip
    if not wnids:
        raise ValueError("none of the listed hashtags spells a WordNet noun")
    full = Vocabulary.from_wnids(wnids, ambiguous)
    return Vocabulary(
        full.labels, {tag: ids for tag, ids in full.hashtag_to_labels.items() if tag in hashtags}
    )
