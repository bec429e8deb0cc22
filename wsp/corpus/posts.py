"""Streaming readers for posts tables (JSON Lines, CSV): one record per post, never the whole table.

A post has a key, an image reference (a path, absolute or relative to the table's folder) and either a
caption or a list of hashtags; the column names are configurable. Malformed rows are yielded as
`Post(error=...)` so the builder counts them instead of crashing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TABLE_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Columns:
    key: str = "key"
    image: str = "image"
    caption: str = "caption"
    hashtags: str = "hashtags"


@dataclass
class Post:
    key: str
    image_path: Path | None = None
    caption: str | None = None
    hashtags: list[str] | None = None
    error: str | None = None  # why the row is unusable; the builder counts it


def read_posts(path: Path, columns: Columns) -> Iterator[Post]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _json_lines(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    else:
        raise ValueError(f"{path}: unsupported posts table (expected {', '.join(TABLE_SUFFIXES)})")
    for line_number, row in enumerate(rows):
        fallback_key = f"{path.stem}_{line_number}"
        yield row if isinstance(row, Post) else _to_post(row, path.parent, columns, fallback_key)


def _json_lines(path: Path) -> Iterator[dict | Post]:
    with path.open(encoding="utf-8", errors="replace") as lines:
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
    with path.open(encoding="utf-8", errors="replace", newline="") as table:
        yield from csv.DictReader(table)


def _to_post(row: dict, base: Path, columns: Columns, fallback_key: str) -> Post:
    key = str(row.get(columns.key) or fallback_key)
    image = row.get(columns.image)
    if not isinstance(image, str) or not image:
        return Post(key, error="no_image_reference")
    caption = row.get(columns.caption)
    hashtags = row.get(columns.hashtags)
    if isinstance(hashtags, str):  # CSV cells hold lists as JSON or space-separated text
        hashtags = _parse_hashtag_cell(hashtags)
    if not isinstance(caption, str) and not isinstance(hashtags, list):
        return Post(key, error="no_caption_or_hashtags")
    return Post(
        key,
        image_path=base / image,  # an absolute image path stays absolute
        caption=caption if isinstance(caption, str) else None,
        hashtags=hashtags if isinstance(hashtags, list) else None,
    )


def _parse_hashtag_cell(cell: str) -> list[str]:
    try:
        value = json.loads(cell)
        if isinstance(value, list):
            return [str(v) for v in value]
    except json.JSONDecodeError:
        pass
    return cell.replace(",", " ").split()
