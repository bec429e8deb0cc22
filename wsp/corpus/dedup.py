"""Near-duplicates of evaluation images in a training corpus (the paper's Section 1 check).

Three detectors, each a row source for matches.csv (eval_image, corpus_key, method, score):
  - exact: identical bytes (SHA-256);
  - phash: perceptual hash (64-bit DCT hash of a 32x32 grey image) within a Hamming distance;
  - embedding: cosine similarity of a timm backbone's pooled features above a threshold. The corpus
    streams past the (small) evaluation set in batches and only each eval image's k nearest corpus
    images are kept, so memory does not grow with the corpus.
Contact sheets (an eval image beside its k nearest corpus images) are for inspection by eye, as the paper
inspected 21 neighbours by hand. `corpus.exclude=<matches.csv>` rebuilds the corpus without the matches.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CORPUS_IMAGE_KEYS = ("jpg", "png", "webp")


@dataclass(frozen=True)
class Match:
    eval_image: str
    corpus_key: str
    method: str
    score: float


def eval_images(folders: list[str]) -> list[Path]:
    """Every image below the evaluation folders, sorted (ImageNet val, CUB test, Places365 val, any folder)."""
    paths = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"task.eval: no folder {folder}")
        paths += sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"task.eval: no images below {folders}")
    return paths


def corpus_samples(corpus: Path) -> Iterator[tuple[str, bytes]]:
    """(source post key, image bytes) of every sample in a corpus's shards, train and val."""
    shards = sorted(json.loads((corpus / "sizes.json").read_text()))
    for sample in wds.WebDataset([str(corpus / s) for s in shards], shardshuffle=False):
        image = next((sample[k] for k in CORPUS_IMAGE_KEYS if k in sample), None)
        if image is not None:
            yield json.loads(sample["json"])["source"], image


def _open_rgb(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:  # an undecodable image cannot be a perceptual or embedding match
        return None


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: Image.Image) -> int:
    """pHash: the signs of the 8x8 lowest DCT frequencies (DC left out) of a 32x32 grey image vs their median."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].flatten()[1:]
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    return np.bitwise_count(a ^ np.uint64(b)).astype(np.int64)


class NearestNeighbours:
    """The k most similar corpus images of each eval image by cosine, merged batch by batch."""

    def __init__(self, queries: torch.Tensor, k: int):
        self.queries = torch.nn.functional.normalize(queries, dim=1)
        self.k = k
        self.scores = torch.full((len(queries), 0), -2.0)
        self.keys: list[list[str]] = [[] for _ in range(len(queries))]

    def add(self, features: torch.Tensor, keys: list[str]) -> None:
        similarity = self.queries @ torch.nn.functional.normalize(features, dim=1).T
        scores = torch.cat([self.scores, similarity], dim=1)
        top = scores.topk(min(self.k, scores.shape[1]), dim=1)
        merged = [row_keys + keys for row_keys in self.keys]
        self.keys = [[merged[q][i] for i in top.indices[q].tolist()] for q in range(len(merged))]
        self.scores = top.values


def find_duplicates(eval_paths: list[Path], corpus: Path, methods: list[str], phash_max_distance: int,
                    backbone: torch.nn.Module | None, transform, threshold: float, k: int,
                    batch_size: int) -> tuple[list[Match], NearestNeighbours | None]:  # fmt: skip
    eval_bytes = [p.read_bytes() for p in eval_paths]
    eval_images_rgb = [_open_rgb(b) for b in eval_bytes]
    by_digest: dict[str, list[int]] = {}
    for i, data in enumerate(eval_bytes):
        by_digest.setdefault(hashlib.sha256(data).hexdigest(), []).append(i)
    valid = np.array([im is not None for im in eval_images_rgb])
    eval_hashes = np.array([perceptual_hash(im) if im else 0 for im in eval_images_rgb], dtype=np.uint64)
    neighbours = None
    if "embedding" in methods:
        usable = [im or Image.new("RGB", (8, 8)) for im in eval_images_rgb]
        neighbours = NearestNeighbours(_embed(backbone, transform, usable, batch_size), k)

    matches: list[Match] = []
    batch_images, batch_keys = [], []
    for key, data in tqdm(corpus_samples(corpus), desc="dedup: corpus", unit="img"):
        if "exact" in methods:
            for i in by_digest.get(hashlib.sha256(data).hexdigest(), []):
                matches.append(Match(str(eval_paths[i]), key, "exact", 1.0))
        image = _open_rgb(data) if ("phash" in methods or neighbours) else None
        if image is None:
            continue
        if "phash" in methods:
            distance = hamming(eval_hashes, perceptual_hash(image))
            for i in np.flatnonzero((distance <= phash_max_distance) & valid):
                matches.append(Match(str(eval_paths[i]), key, "phash", float(distance[i])))
        if neighbours is not None:
            batch_images.append(image)
            batch_keys.append(key)
            if len(batch_images) == batch_size:
                neighbours.add(_embed(backbone, transform, batch_images, batch_size), batch_keys)
                batch_images, batch_keys = [], []
    if neighbours is not None and batch_images:
        neighbours.add(_embed(backbone, transform, batch_images, batch_size), batch_keys)
    if neighbours is not None:
        for q, (scores, keys) in enumerate(zip(neighbours.scores.tolist(), neighbours.keys, strict=True)):
            matches += [Match(str(eval_paths[q]), key, "embedding", s) for s, key in zip(scores, keys, strict=True)
                        if s >= threshold and valid[q]]  # fmt: skip
    return matches, neighbours


@torch.no_grad()
def _embed(backbone: torch.nn.Module, transform, images: list[Image.Image], batch_size: int) -> torch.Tensor:
    backbone.eval()
    features = [backbone(torch.stack([transform(im) for im in images[i : i + batch_size]])).float()
                for i in range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(features)


def write_matches(matches: list[Match], path: Path) -> None:
    with path.open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["eval_image", "corpus_key", "method", "score"])
        for m in sorted(matches, key=lambda m: (m.eval_image, m.method, m.corpus_key)):
            writer.writerow([m.eval_image, m.corpus_key, m.method, f"{m.score:.4f}"])


def contact_sheets(eval_paths: list[Path], neighbours: NearestNeighbours, corpus: Path, selected: set[int],
                   out: Path, thumb: int = 96) -> int:  # fmt: skip
    """One PNG per selected eval image: it (left, red frame) and its k nearest corpus images by score."""
    wanted = {key for q in selected for key in neighbours.keys[q]}
    thumbs = {key: _open_rgb(data) for key, data in corpus_samples(corpus) if key in wanted}
    out.mkdir(parents=True, exist_ok=True)
    for q in sorted(selected):
        keys = neighbours.keys[q]
        sheet = Image.new("RGB", ((len(keys) + 1) * (thumb + 4), thumb + 4), "white")
        query = Image.open(eval_paths[q]).convert("RGB").resize((thumb, thumb))
        sheet.paste(Image.new("RGB", (thumb + 4, thumb + 4), "red"), (0, 0))
        sheet.paste(query, (2, 2))
        for j, key in enumerate(keys, start=1):
            if thumbs.get(key) is not None:
                sheet.paste(thumbs[key].resize((thumb, thumb)), (j * (thumb + 4) + 2, 2))
        sheet.save(out / f"{q:06d}_{eval_paths[q].stem}.png")
    return len(selected)
