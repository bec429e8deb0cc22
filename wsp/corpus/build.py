"""The corpus builder: posts tables -> canonical labels -> WebDataset shards, in two streaming passes.

Pass 1 counts canonical labels (memory bounded by the vocabulary); the reduce keeps labels seen in at
least `min_count` posts and numbers them compactly. Pass 2 labels each post again, passes its image
bytes through unchanged and writes train/val shards. Every post that is not written is counted under
its reason in stats.json, with a few example keys.

Outputs beside the shards: vocab.json (labels, their train frequencies, the hashtag map), sizes.json
(samples per shard), stats.json (counts of everything kept and dropped).
"""

from __future__ import annotations

import glob
import io
import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from wsp.corpus.posts import Columns, Post, read_posts
from wsp.corpus.sampling import label_frequencies
from wsp.corpus.shards import ShardSink
from wsp.hashtags.parse import MAX_HASHTAG_CHARS, extract_hashtags, normalize_hashtags
from wsp.hashtags.vocab import Vocabulary

IMAGE_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
EXAMPLES_PER_REASON = 5


@dataclass(frozen=True)
class BuildOptions:
    shard_size: int = 1000
    val_fraction: float = 0.05
    min_count: int = 1
    max_hashtag_chars: int = MAX_HASHTAG_CHARS


class DropCounter:
    """Counts of posts not written, by reason, with a few example keys for each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def drop(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append(key)


def expand_inputs(patterns: list[str] | str) -> list[Path]:
    """Sorted paths matching glob patterns (sorted, so the build is order-independent of the file system)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    paths = sorted({Path(p) for pattern in patterns for p in glob.glob(str(pattern), recursive=True)})
    if not paths:
        raise FileNotFoundError(f"corpus.input matches no file: {patterns}")
    return paths


def hashtags_of(post: Post, max_chars: int) -> list[str]:
    tags = extract_hashtags(post.caption, max_chars) if post.caption else []
    return list(dict.fromkeys(tags + normalize_hashtags(post.hashtags or [], max_chars)))


def is_val(key: str, val_fraction: float) -> bool:
    """Deterministic split by key: a post lands in the same split whatever the order or sharding."""
    return zlib.crc32(key.encode()) % 100_000 < val_fraction * 100_000


def shard_key(key: str) -> str:
    # WebDataset splits a member name at its first '.', so keys must not contain one (nor a '/').
    return key.replace(".", "_").replace("/", "_")


def _posts(inputs: list[Path], columns: Columns, desc: str):
    for path in tqdm(inputs, desc=desc, unit="table"):
        yield from read_posts(path, columns)


def count_labels(
    inputs: list[Path], vocabulary: Vocabulary, columns: Columns, options: BuildOptions
) -> Counter:
    """Pass 1: the number of posts carrying each label (memory: one counter per label)."""
    counts: Counter[int] = Counter()
    for post in _posts(inputs, columns, "corpus pass 1/2 (count)"):
        if post.error is None:
            counts.update(vocabulary.labels_of(hashtags_of(post, options.max_hashtag_chars)))
    return counts


def read_image(path: Path) -> tuple[bytes, str]:
    """The file's bytes (unchanged) and WebDataset extension; raises ValueError if not a usable image."""
    extension = IMAGE_EXTENSIONS.get(path.suffix.lower())
    if extension is None:
        raise ValueError("unsupported_image_type")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError("missing_image") from err
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as err:  # PIL raises many types on bad files
        raise ValueError("unreadable_image") from err
    return data, extension


def build(
    inputs: list[Path], output: Path, vocabulary: Vocabulary, columns: Columns, options: BuildOptions
) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    counts = count_labels(inputs, vocabulary, columns, options)
    kept = sorted(label for label, n in counts.items() if n >= options.min_count)
    corpus_vocab = vocabulary.restrict(kept)
    if not len(corpus_vocab):
        raise ValueError(
            f"no label occurs in at least corpus.min_count={options.min_count} posts of {inputs[0].parent}"
        )

    drops = DropCounter()
    sinks = {split: ShardSink(output, split, options.shard_size) for split in ("train", "val")}
    train_label_sets: list[list[int]] = []
    posts_read = 0
    for post in _posts(inputs, columns, "corpus pass 2/2 (write)"):
        posts_read += 1
        if post.error is not None:
            drops.drop(post.error, post.key)
            continue
        hashtags = hashtags_of(post, options.max_hashtag_chars)
        labels = corpus_vocab.labels_of(hashtags)
        if not labels:
            reason = "rare_labels_only" if vocabulary.labels_of(hashtags) else "no_vocabulary_hashtag"
            drops.drop(reason, post.key)
            continue
        try:
            image, extension = read_image(post.image_path)
        except ValueError as err:
            drops.drop(str(err), post.key)
            continue
        split = "val" if is_val(post.key, options.val_fraction) else "train"
        meta = {
            "labels": labels,
            "label_names": [corpus_vocab.labels[i].name for i in labels],
            "hashtags": hashtags,
            "source": post.key,
        }
        sinks[split].write({"__key__": shard_key(post.key), extension: image, "json": meta})
        if split == "train":
            train_label_sets.append(labels)
    sizes = {name: n for sink in sinks.values() for name, n in sink.close().items()}

    frequencies = label_frequencies(train_label_sets, len(corpus_vocab))
    label_counts = Counter(label for labels in train_label_sets for label in labels)
    vocab_json = corpus_vocab.to_json()
    for entry in vocab_json["labels"]:
        entry["train_images"] = label_counts[entry["id"]]
        entry["train_frequency"] = float(frequencies[entry["id"]])
    stats = {
        "inputs": [str(p) for p in inputs],
        "posts_read": posts_read,
        "written": {split: sum(n for name, n in sizes.items() if name.startswith(split)) for split in sinks},
        "dropped": dict(sorted(drops.counts.items())),
        "dropped_examples": dict(sorted(drops.examples.items())),
        "labels": {"vocabulary": len(vocabulary), "seen": len(counts), "kept": len(corpus_vocab)},
        "options": options.__dict__,
    }
    _write_json(output / "vocab.json", vocab_json)
    _write_json(output / "sizes.json", sizes)
    _write_json(output / "stats.json", stats)
    return stats


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)
