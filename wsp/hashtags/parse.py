"""Hashtag extraction from captions and the normal form used to match hashtags to WordNet lemmas.

Captions are untrusted text: any script, emoji, control characters, tens of thousands of characters.
Extraction is Unicode-aware (`\\w` covers letters and digits of every script), case-folded and
length-capped, and never raises on str input.
"""

from __future__ import annotations

import re
import unicodedata

MAX_CAPTION_CHARS = 20_000  # captions longer than this are truncated before parsing
MAX_HASHTAG_CHARS = 64  # longer "hashtags" are run-on text or spam, never a WordNet lemma

# A hashtag is '#' followed by word characters; '#' inside a word (foo#bar) does not start one.
_HASHTAG = re.compile(r"(?<!\w)[#＃](\w+)")
# Characters that differ between spellings of one lemma: `Ursus_arctos`, `jack-o'-lantern`, `St. Bernard`.
_SEPARATORS = re.compile(r"[\s_\-'’.]+")


def normalize(tag: str) -> str:
    """The matching form of a hashtag or lemma: NFKC, case-folded, separators and a leading '#' removed.

    `Ursus_arctos`, `#UrsusArctos` and `ursus-arctos` all give `ursusarctos`.
    """
    tag = unicodedata.normalize("NFKC", tag).casefold().lstrip("#")
    return _SEPARATORS.sub("", tag)


def extract_hashtags(caption: str, max_len: int = MAX_HASHTAG_CHARS) -> list[str]:
    """Normalised hashtags of a caption, in order of first appearance, without repeats."""
    text = caption[:MAX_CAPTION_CHARS]
    if not text.isascii():  # NFKC changes nothing in ASCII text: skip it on the common path
        text = unicodedata.normalize("NFKC", text)
    # A match holds only word characters, so of the separators only '_' can occur in it.
    tags = (match.casefold().replace("_", "") for match in _HASHTAG.findall(text))
    return list(dict.fromkeys(tag for tag in tags if tag and len(tag) <= max_len))


def normalize_hashtags(tags: list[str], max_len: int = MAX_HASHTAG_CHARS) -> list[str]:
    """A hashtag list given as data (not a caption), normalised like extracted ones."""
    seen: dict[str, None] = {}
    for tag in tags:
        if isinstance(tag, str):
            tag = normalize(tag)
            if tag and len(tag) <= max_len:
                seen.setdefault(tag, None)
    return list(seen)
