"""Near-duplicates of evaluation images in a training corpus (the paper's Section 1 check).

Three detectors, each a row source for matches.csv (eval_image, corpus_key, method, score):
  - exact: identical bytes (SHA-256);
  - phash: perceptual hash (63 bits: the 8x8 lowest DCT frequencies of a 32x32 grey image, DC left
    out) within a Hamming distance;
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

from wsp.corpus.shards import IMAGE_KEYS
from wsp.utils.images import IMAGE_SUFFIXES


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
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
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
    """The k most similar corpus images of each eval image by cosine, merged batch by batch.

    Candidates are integer ids; only the keys of current top-k members are kept, so memory is
    O(eval images x k) however large the corpus."""

    def __init__(self, queries: torch.Tensor, k: int):
        self.queries = torch.nn.functional.normalize(queries, dim=1)
        self.k, self.seen = k, 0
        self.scores = torch.empty(len(queries), 0)
        self.ids = torch.empty(len(queries), 0, dtype=torch.long)
        self.key_of: dict[int, str] = {}

    def add(self, features: torch.Tensor, keys: list[str]) -> None:
        similarity = self.queries @ torch.nn.functional.normalize(features, dim=1).T
        ids = torch.arange(self.seen, self.seen + len(keys)).expand(len(self.queries), -1)
        self.key_of.update(zip(range(self.seen, self.seen + len(keys)), keys, strict=True))
        self.seen += len(keys)
        scores, ids = torch.cat([self.scores, similarity], dim=1), torch.cat([self.ids, ids], dim=1)
        top = scores.topk(min(self.k, scores.shape[1]), dim=1)
        self.scores, self.ids = top.values, ids.gather(1, top.indices)
        alive = set(self.ids.flatten().tolist())
        self.key_of = {i: key for i, key in self.key_of.items() if i in alive}

    @property
    def keys(self) -> list[list[str]]:
        return [[self.key_of[i] for i in row] for row in self.ids.tolist()]


def _fingerprints(paths: list[Path], methods: list[str], backbone, transform, batch_size: int):
    """Per eval image, without keeping any image: its digest, perceptual hash, decodability, embedding."""
    digests, hashes, valid, features, batch = [], [], [], [], []
    for path in tqdm(paths, desc="dedup: eval images", unit="img"):
        data = path.read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        image = _open_rgb(data) if ("phash" in methods or "embedding" in methods) else None
        valid.append(image is not None)
        hashes.append(perceptual_hash(image) if image is not None and "phash" in methods else 0)
        if "embedding" in methods:
            batch.append(image or Image.new("RGB", (8, 8)))
            if len(batch) == batch_size:
                features.append(_embed(backbone, transform, batch, batch_size))
                batch = []
    if batch:
        features.append(_embed(backbone, transform, batch, batch_size))
    embeddings = torch.cat(features) if features else None
    return digests, np.array(hashes, dtype=np.uint64), np.array(valid), embeddings


def find_duplicates(eval_paths: list[Path], corpus: Path, methods: list[str], phash_max_distance: int,
                    backbone: torch.nn.Module | None, transform, threshold: float, k: int,
                    batch_size: int) -> tuple[list[Match], NearestNeighbours | None]:  # fmt: skip
    digests, eval_hashes, valid, embeddings = _fingerprints(
        eval_paths, methods, backbone, transform, batch_size
    )
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(i)
    neighbours = NearestNeighbours(embeddings, k) if embeddings is not None else None

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
    keys_of = neighbours.keys
    wanted = {key for q in selected for key in keys_of[q]}
    thumbs = {}
    for key, data in corpus_samples(corpus):
        if key in wanted and (image := _open_rgb(data)) is not None:
            image.thumbnail((thumb, thumb))  # keep thumbnails, not full images
            thumbs[key] = image
    out.mkdir(parents=True, exist_ok=True)
    for q in sorted(selected):
        keys = keys_of[q]
        sheet = Image.new("RGB", ((len(keys) + 1) * (thumb + 4), thumb + 4), "white")
        query = Image.open(eval_paths[q]).convert("RGB").resize((thumb, thumb))
        sheet.paste(Image.new("RGB", (thumb + 4, thumb + 4), "red"), (0, 0))
        sheet.paste(query, (2, 2))
        for j, key in enumerate(keys, start=1):
            if thumbs.get(key) is not None:
                sheet.paste(thumbs[key].resize((thumb, thumb)), (j * (thumb + 4) + 2, 2))
        sheet.save(out / f"{q:06d}_{eval_paths[q].stem}.png")
    return len(selected)
