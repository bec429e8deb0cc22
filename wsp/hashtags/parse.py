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

# A hashtag is '#' followed by word characters; '#' inside a word (foo#bar) does not start one. It is
# matched after NFKC, which turns the full-width and small number signs (＃, ﹟) into '#'; a pattern
# starting with the literal '#' lets the regex engine skip to each '#' instead of trying every position.
_HASHTAG = re.compile(r"#(?<!\w#)(\w+)")
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
    # Fold all matches in one call: a match holds only word characters, none of which case-folds to a
    # space, so spaces join them unambiguously; of the separators, only '_' can occur in a match.
    # split() drops the matches that were all '_'.
    folded = " ".join(_HASHTAG.findall(text)).casefold().replace("_", "")
    tags = folded.split()
    if len(set(tags)) < len(tags):  # cheaper to check than to build a dict for every caption
        tags = list(dict.fromkeys(tags))
    if len(folded) > max_len:  # else no tag can be too long
        return [tag for tag in tags if len(tag) <= max_len]
    return tags


def normalize_hashtags(tags: list[str], max_len: int = MAX_HASHTAG_CHARS) -> list[str]:
    """A hashtag list given as data (not a caption), normalised like extracted ones."""
    seen: dict[str, None] = {}
    for tag in tags:
        if isinstance(tag, str):
            tag = normalize(tag)
            if tag and len(tag) <= max_len:
                seen.setdefault(tag, None)
    return list(seen)
