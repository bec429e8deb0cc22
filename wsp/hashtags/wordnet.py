"""WordNet 3.0 through nltk: provisioning the corpus files, loading them, ImageNet wnid <-> synset.

ImageNet wnids are WordNet 3.0 noun offsets (n01440764 -> offset 1440764 -> tench.n.01), so the exact
version matters. Provisioning tries nltk's downloader, then a system WordNet 3.0 (Debian's
`wordnet-base`, installed with apt when running as root), copied into `<sys.prefix>/nltk_data`, which
nltk searches by default (nltk refuses corpus paths outside its data roots, symlinks included).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

WORDNET_HELP = (
    "WordNet 3.0 for nltk is missing: run `bash scripts/setup.sh`, or `python -m nltk.downloader wordnet`, "
    "or install Debian's wordnet-base and rerun the setup"
)
SYSTEM_WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
WORDNET_FILES = (
    "data.noun", "data.verb", "data.adj", "data.adv",
    "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc", "cntlist.rev",
)  # fmt: skip
# The lexicographer file names of WordNet 3.0 (Debian's package lacks this file; nltk needs it).
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
TENCH_OFFSET = 1440764  # n01440764, the first ImageNet-1k class


class WordNetMissing(RuntimeError):
    pass


def nltk_data_dir() -> Path:
    return Path(sys.prefix) / "nltk_data"


@functools.cache
def load_wordnet():
    """The nltk WordNet reader, checked to be version 3.0 (the one ImageNet wnids index)."""
    from nltk.corpus import wordnet as wn

    try:
        wn.ensure_loaded()
    except LookupError as err:
        raise WordNetMissing(WORDNET_HELP) from err
    if wn.get_version() != "3.0":
        raise WordNetMissing(f"WordNet {wn.get_version()} found, but ImageNet wnids need WordNet 3.0")
    return wn


def wnid_to_synset(wnid: str):
    """`n01440764` -> Synset('tench.n.01')."""
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise ValueError(f"not a WordNet noun id: {wnid!r} (expected n + 8 digits)")
    synset = load_wordnet().synset_from_pos_and_offset("n", int(wnid[1:]))
    if synset is None:
        raise ValueError(f"{wnid}: no WordNet 3.0 noun synset at that offset")
    return synset


def synset_to_wnid(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


@functools.cache
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in the standard sorted order (timm's packaged list, offline)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def _wordnet_works() -> bool:
    load_wordnet.cache_clear()
    try:
        return load_wordnet().synset_from_pos_and_offset("n", TENCH_OFFSET).name() == "tench.n.01"
    except (WordNetMissing, LookupError):
        return False
    finally:
        load_wordnet.cache_clear()


def _try_nltk_download() -> bool:
    import nltk

    try:
        return bool(
            nltk.download("wordnet", download_dir=str(nltk_data_dir()), quiet=True, raise_on_error=True)
        )
    except Exception:  # no network, registry refused, corrupt zip: fall through to the system copy
        return False


def _system_wordnet() -> Path | None:
    for directory in SYSTEM_WORDNET_DIRS:
        if (directory / "data.noun").is_file():
            return directory
    return None


def _apt_install_wordnet() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wordnet-base"], check=False, env=env)


def _copy_system_wordnet(source: Path) -> None:
    target = nltk_data_dir() / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if not (target / "lexnames").is_file():
        lines = (f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
        (target / "lexnames").write_text("".join(lines))
    (target / "index.sense").touch()  # sense keys are not used by wsp; nltk only needs the file


def provision() -> str:
    """Make WordNet 3.0 loadable by nltk; return where it came from. Raises WordNetMissing."""
    if _wordnet_works():
        return "already present"
    if _try_nltk_download() and _wordnet_works():
        return "nltk downloader"
    if _system_wordnet() is None:
        _apt_install_wordnet()
    source = _system_wordnet()
    if source is not None:
        _copy_system_wordnet(source)
        if _wordnet_works():
            return f"system copy from {source}"
    raise WordNetMissing(WORDNET_HELP)


if __name__ == "__main__":
    if sys.argv[1:] != ["provision"]:
        sys.exit("usage: python -m wsp.hashtags.wordnet provision")
    try:
        print(f"WordNet 3.0: {provision()} ({nltk_data_dir()})")
    except WordNetMissing as err:
        sys.exit(f"error: {err}")
