"""Streaming readers for the corpus builder's inputs, one record per post, never a whole input in memory.

Inputs ("units", each a file the builder maps over):
  - posts tables: JSON Lines (`.jsonl`), CSV (`.csv`) or Parquet (`.parquet`, read in row batches), with
    a key, an image reference (a path, absolute or relative to the table's folder, or the image bytes
    themselves) and a caption and/or a list of hashtags; column names are configurable;
  - img2dataset shards (`.tar`): `{key}.jpg` + `{key}.json` carrying caption / hashtags / extra columns.
Unusable records come out as `Post(error=...)` so the builder counts them instead of crashing.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SHARD_SUFFIXES = (".tar",)
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Columns:
    key: str = "key"
    image: str = "image"
    caption: str = "caption"
    hashtags: str = "hashtags"


@dataclass
class Post:
    key: str
    image_path: str | None = None
    image_bytes: bytes | None = None
    caption: str | None = None
    hashtags: list[str] | None = None
    error: str | None = None  # why the record is unusable; the builder counts it


def read_posts(path: Path, columns: Columns) -> Iterator[Post]:
    suffix = path.suffix.lower()
    if suffix in SHARD_SUFFIXES:
        yield from _img2dataset_posts(path, columns)
        return
    if suffix in (".jsonl", ".json"):
        rows = _json_lines(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path, columns)
    else:
        raise ValueError(f"{path}: unsupported input (expected {', '.join(TABLE_SUFFIXES + SHARD_SUFFIXES)})")
    # Relative image paths are relative to the table's folder: os.path.join(folder, image) is that
    # prefix + image, without os.path.join's or pathlib's cost per row.
    prefix, stem = os.path.join(path.parent, ""), path.stem
    for line_number, row in enumerate(rows):
        yield row if isinstance(row, Post) else _to_post(row, prefix, columns, f"{stem}_{line_number}")


def _json_lines(path: Path) -> Iterator[dict | Post]:
    with path.open(encoding="utf-8-sig", errors="replace") as lines:  # -sig: a byte-order mark is not data
        for line_number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield row if isinstance(row, dict) else Post(f"{path.stem}_{line_number}", error="malformed_row")


def _csv_rows(path: Path) -> Iterator[dict]:
    csv.field_size_limit(2**24)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as table:
        yield from csv.DictReader(table)


def _parquet_rows(path: Path, columns: Columns) -> Iterator[dict | Post]:
    """Rows in batches; an unreadable or truncated file ends in one `corrupt_shard` record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = table.schema.names
        wanted = [c for c in (columns.key, columns.image, columns.caption, columns.hashtags) if c in names]
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError):
        yield Post(f"{path.stem}_corrupt", error="corrupt_shard")


def _to_post(row: dict, prefix: str, columns: Columns, fallback_key: str) -> Post:
    """The post of a table row; a relative image path is prefixed with `prefix` (the table's folder)."""
    key = row.get(columns.key)
    key = fallback_key if key is None or key == "" else str(key)
    image = row.get(columns.image)
    if isinstance(image, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if not isinstance(image, (str, bytes)) or not image:
        return Post(key, error="no_image_reference")
    caption = row.get(columns.caption)
    if not isinstance(caption, str):
        caption = None
    hashtags = row.get(columns.hashtags)
    if isinstance(hashtags, str):  # CSV cells hold lists as JSON or space-separated text
        hashtags = _parse_hashtag_cell(hashtags)
    elif not isinstance(hashtags, list):
        hashtags = None
    if caption is None and hashtags is None:
        return Post(key, error="no_caption_or_hashtags")
    if isinstance(image, bytes):
        return Post(key, image_bytes=image, caption=caption, hashtags=hashtags)
    path = image if image.startswith("/") else prefix + image  # absolute paths stay
    return Post(key, image_path=path, caption=caption, hashtags=hashtags)


def _parse_hashtag_cell(cell: str) -> list[str]:
    try:
        value = json.loads(cell)
        if isinstance(value, list):
            return [str(v) for v in value]
    except json.JSONDecodeError:
        pass
    return cell.replace(",", " ").split()


def _img2dataset_posts(path: Path, columns: Columns) -> Iterator[Post]:
    """Posts of one img2dataset shard; a truncated or unreadable tar ends in one `corrupt_shard` record."""
    try:
        for key, members in _tar_samples(path):
            yield _sample_to_post(key, members, columns)
    except (tarfile.TarError, OSError, EOFError):
        yield Post(f"{path.stem}_corrupt", error="corrupt_shard")


def _tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for consecutive tar members sharing a key (the WebDataset convention).

    tarfile stops quietly at a file cut inside a header, so an archive must also end where its
    end-of-archive blocks say it does; a shorter one raises (its remaining posts are lost).
    """
    key, members = None, {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            stem, _, extension = member.name.rpartition("/")[2].partition(".")
            if stem != key and members:
                yield key, members
                members = {}
            key = stem
            members[extension.lower()] = tar.extractfile(member).read()
        if tar.offset + 2 * tarfile.BLOCKSIZE > path.stat().st_size:
            raise tarfile.ReadError(f"{path}: truncated")
    if members:
        yield key, members


def _sample_to_post(key: str, members: dict[str, bytes], columns: Columns) -> Post:
    image = next((members[e] for e in IMAGE_MEMBERS if e in members), None)
    if image is None:
        return Post(key, error="no_image_reference")
    try:
        meta = json.loads(members.get("json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Post(key, error="malformed_row")
    if not isinstance(meta, dict):
        return Post(key, error="malformed_row")
    return _to_post({**meta, columns.image: image}, "", columns, key)


def img2dataset_source_stats(path: Path) -> dict[str, int]:
    """Download failures img2dataset recorded beside a shard (`{shard}_stats.json`), if present."""
    stats_file = path.with_name(f"{path.stem}_stats.json")
    if not stats_file.is_file():
        return {}
    try:
        stats = json.loads(stats_file.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: int(v) for k, v in stats.items() if k.startswith("failed_to_") and isinstance(v, int)}
